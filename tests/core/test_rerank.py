"""The measured (reward model, policy) record and the pairing gate built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.desired_state import DesiredStateError
from core.rerank import read_evaluations, record_evaluation, rerank_path, verdict


def test_record_then_read_then_gate(tmp_path: Path) -> None:
    assert read_evaluations(tmp_path) == {}
    assert verdict({}, "rm", "base").allowed and not verdict({}, "rm", "base").evaluated
    record_evaluation(tmp_path, "rm", "base", {"gap_captured": 0.42, "pairwise_accuracy": 0.81, "n": 8})
    record_evaluation(tmp_path, "rm", "ppo", {"gap_captured": -0.1, "pairwise_accuracy": 0.4, "n": 8})
    record_evaluation(tmp_path, "rm", "sft", {"gap_captured": 0.0, "n": 8})
    evaluations = read_evaluations(tmp_path)
    assert set(evaluations["rm"]) == {"base", "ppo", "sft"}
    good, bad, zero = (verdict(evaluations, "rm", p) for p in ("base", "ppo", "sft"))
    assert good.allowed and good.evaluated and good.gap_captured == 0.42
    assert not bad.allowed and "-0.10 of the oracle gap" in bad.reason
    assert not zero.allowed  # no better than one sample is refused too
    record_evaluation(tmp_path, "rm", "ppo", {"gap_captured": 0.3})  # a re-evaluation replaces
    assert verdict(read_evaluations(tmp_path), "rm", "ppo").allowed
    on_disk = json.loads(rerank_path(tmp_path).read_text())
    assert on_disk["schema"] == 1 and on_disk["evaluations"]["rm"]["base"]["n"] == 8


def test_a_damaged_file_is_an_error_not_an_empty_record(tmp_path: Path) -> None:
    rerank_path(tmp_path).parent.mkdir(parents=True)
    rerank_path(tmp_path).write_text("{not json")
    with pytest.raises(DesiredStateError, match="cannot read"):
        read_evaluations(tmp_path)
    rerank_path(tmp_path).write_text("[]")
    with pytest.raises(DesiredStateError, match="no 'evaluations'"):
        read_evaluations(tmp_path)

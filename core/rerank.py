"""How well each reward model reranks each policy, as measured, and the gate built on it.

A reward model trained on one policy's samples can make another policy's Best-of-N answers
*worse* than its own single sample (measured in this project: an off-policy reward model
lowered every tuned policy). So a (policy, reward model) pairing is judged by its held-out
evaluation, `bonserve eval --n N --reward-model RM --record`, which stores the numbers here:

    <registry root>/_state/rerank.json
    {"schema": 1, "evaluations": {RM: {POLICY: {"gap_captured": ..., "pairwise_accuracy": ...,
                                                 "bon_accuracy": ..., "n": 8, "prompts": 100, ...}}}}

`gap_captured` = (BoN-n accuracy - per-sample accuracy) / (pass@n - per-sample accuracy): the
share of what a perfect reranker would add that this reward model adds. <= 0 means Best-of-N
with it is no better than (or worse than) one sample of the policy.

`verdict` is the gate: pairings whose recorded gap captured is <= 0 are refused (the server
refuses such a promotion unless forced and flags it in /v1/models and a metric); pairings
never evaluated are allowed but reported as unevaluated. Writes are serialised and atomic,
like the desired-state file beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.desired_state import STATE_DIR, DesiredStateError, default_writer, locked, write_json_atomic
from core.registry import check_name

RERANK_FILE = "rerank.json"
SCHEMA_VERSION = 1
# What an evaluation record keeps (a subset of `bonserve eval`'s result, plus where from).
RECORD_KEYS = (
    "gap_captured",
    "pairwise_accuracy",
    "pairs",
    "bon_accuracy",
    "per_sample_accuracy",
    "pass_at_n",
    "majority_accuracy",
    "n",
    "temperature",
    "prompts",
    "task",
    "split",
)


def rerank_path(registry_root: Path | str) -> Path:
    return Path(registry_root) / STATE_DIR / RERANK_FILE


def read_evaluations(registry_root: Path | str) -> dict[str, dict[str, dict[str, Any]]]:
    """reward model -> policy -> record; empty when nothing was recorded."""
    path = rerank_path(registry_root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise DesiredStateError(f"cannot read {path}: {exc}") from exc
    evaluations = data.get("evaluations") if isinstance(data, dict) else None
    if not isinstance(evaluations, dict):
        raise DesiredStateError(f"{path}: no 'evaluations' mapping")
    return evaluations


def record_evaluation(
    registry_root: Path | str,
    reward_model: str,
    policy: str,
    record: dict[str, Any],
    source: str | None = None,
) -> dict[str, Any]:
    """Store (replace) the evaluation of `reward_model` reranking `policy`; returns it."""
    check_name(reward_model)
    check_name(policy)
    kept = {k: record.get(k) for k in RECORD_KEYS}
    kept.update({"at": time.time(), "by": default_writer(), "source": source})
    path = rerank_path(registry_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        evaluations = read_evaluations(registry_root)
        evaluations.setdefault(reward_model, {})[policy] = kept
        write_json_atomic(path, {"schema": SCHEMA_VERSION, "evaluations": evaluations})
    return kept


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one pairing."""

    allowed: bool
    evaluated: bool
    gap_captured: float | None
    pairwise_accuracy: float | None
    reason: str


def verdict(evaluations: dict[str, dict[str, dict[str, Any]]], reward_model: str, policy: str) -> Verdict:
    """Refuse a pairing whose held-out gap captured is <= 0; allow unevaluated ones."""
    record = evaluations.get(reward_model, {}).get(policy)
    if record is None:
        return Verdict(True, False, None, None, f"{reward_model!r} was never evaluated on {policy!r}")
    gap, acc = record.get("gap_captured"), record.get("pairwise_accuracy")
    if gap is None:
        return Verdict(True, True, None, acc, "no oracle gap on the evaluated prompts (pass@n = per-sample)")
    if gap <= 0:
        return Verdict(
            False,
            True,
            gap,
            acc,
            f"{reward_model!r} captures {gap:.2f} of the oracle gap on {policy!r} held-out prompts: "
            "Best-of-N with it is no better than one sample of the policy",
        )
    return Verdict(True, True, gap, acc, f"captures {gap:.2f} of the oracle gap")

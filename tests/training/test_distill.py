"""training/distill.py: Best-of-N distillation picks the reward model's winners and trains on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.flags import ConfigError
from core.registry import DEFAULT_MODEL_NAME, Registry
from tests.reference import transformers_rewards
from training.data import DataError, load_rows, write_jsonl
from training.distill import bon_winners, load_samples, run, winner
from training.distill_config import BoNDistillConfig
from training.reward import init_reward_model

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def samples_file(tmp_path: Path, rows: list[dict], policy: str | None = DEFAULT_MODEL_NAME) -> Path:
    """A samples file as `data prefs --out OUT` writes it, with OUT.stats.json beside it."""
    path = tmp_path / "prefs.jsonl.samples.jsonl"
    write_jsonl(path, rows)
    if policy is not None:
        (tmp_path / "prefs.jsonl.stats.json").write_text(json.dumps({"policy": policy, "temperature": 0.4}))
    return path


def test_the_winner_is_the_best_non_empty_reply() -> None:
    assert winner(["a", "b", "c"], [0.1, 0.9, 0.5]) == 1
    assert winner(["a", "   ", "c"], [0.1, 5.0, 0.5]) == 2  # an empty reply never wins
    assert winner(["a", "b"], [0.7, 0.7]) == 0  # the first of equals
    assert winner(["", " "], [1.0, 2.0]) is None


def test_bon_winners_uses_the_first_n_and_counts_gold() -> None:
    rows = [
        {"id": "p0", "prompt": PROMPT, "samples": ["4", "5", "6"], "gold": [0.0, 1.0, 0.0]},
        {"id": "p1", "prompt": PROMPT, "samples": ["", "", "5"], "gold": [0.0, 0.0, 1.0]},
    ]
    # n=2: p0's third sample is not a candidate; p1's two candidates are empty
    out, stats = bon_winners(rows, [[0.2, 0.3], [1.0, 2.0]], n=2)
    assert [r["completion"][0]["content"] for r in out] == ["5"]
    assert out[0]["prompt"] == PROMPT and out[0]["reward"] == 0.3 and out[0]["gold"] == 1.0
    assert stats["winners"] == 1 and stats["all_empty_dropped"] == 1
    assert stats["winner_gold_mean"] == 1.0 and stats["sample_gold_mean"] == 0.25


def test_samples_files_are_checked(tmp_path: Path) -> None:
    bad = samples_file(tmp_path, [{"prompt": PROMPT, "samples": ["a"]}])
    with pytest.raises(DataError, match="1 samples, fewer than n=2"):
        load_samples(bad, 2)
    write_jsonl(bad, [{"prompt": PROMPT, "samples": "a b"}])
    with pytest.raises(DataError, match="expected a list of strings"):
        load_samples(bad, 2)
    write_jsonl(bad, [{"prompt": 3, "samples": ["a", "b"]}])
    with pytest.raises(DataError, match="field 'prompt'"):
        load_samples(bad, 2)


def test_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reward_model"):
        BoNDistillConfig(data="s.jsonl", name="d")
    with pytest.raises(ConfigError, match="at least 2 candidates"):
        BoNDistillConfig(data="s.jsonl", name="d", reward_model="rm", n=1)


def test_another_policys_samples_are_refused(tmp_path: Path) -> None:
    path = samples_file(tmp_path, [{"prompt": PROMPT, "samples": ["a", "b"]}], policy="arith-dpo")
    config = BoNDistillConfig(data=str(path), name="d", reward_model="rm", n=2, registry=str(tmp_path))
    with pytest.raises(ConfigError, match="drawn by 'arith-dpo'"):
        run(config)
    (tmp_path / "prefs.jsonl.stats.json").unlink()
    with pytest.raises(ConfigError, match=r"no OUT\.stats\.json"):
        run(config)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_distill_trains_on_the_reward_models_picks(tmp_registry: Registry, tmp_path: Path) -> None:
    """Real base model, a real (untrained-head) reward model, two SFT steps."""
    init_reward_model(tmp_registry, DEFAULT_MODEL_NAME, "rm-init")
    replies = [["5", "The answer is 5.", "six"], ["Paris", "I think it is Rome.", "paris!"]]
    prompts = [PROMPT, [{"role": "user", "content": "Capital of France?"}]]
    rows = [
        {"id": f"p{i}", "prompt": p, "samples": r, "gold": [1.0, 1.0, 0.0] if i == 0 else [1.0, 0.0, 1.0]}
        for i, (p, r) in enumerate(zip(prompts, replies, strict=True))
    ]
    path = samples_file(tmp_path, rows)
    config = BoNDistillConfig(
        data=str(path),
        name="distilled",
        reward_model="rm-init",
        n=3,
        rm_backend="transformers",
        registry=str(tmp_registry.root),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        batch_size=2,
        max_length=128,
        logging_steps=1,
        save_steps=1,
    )
    entry = run(config)
    assert entry is not None
    m = tmp_registry.load("distilled").manifest
    assert (m.kind, m.format, m.parent) == ("sft", "lora", DEFAULT_MODEL_NAME)
    distilled = m.extra["distilled"]
    assert (distilled["reward_model"], distilled["n"], distilled["winners"]) == ("rm-init", 3, 2)
    assert (distilled["samples_policy"], distilled["samples_temperature"]) == (DEFAULT_MODEL_NAME, 0.4)
    # the winners are the reward model's argmax, recomputed independently with transformers
    picked = [r["completion"][0]["content"] for r in load_rows(tmp_path / "run" / "bon-winners.jsonl")]
    model_dir = tmp_registry.path_of("rm-init")
    expected = []
    for p, r in zip(prompts, replies, strict=True):
        scores = transformers_rewards(model_dir, p, r)
        expected.append(r[max(range(len(r)), key=lambda i: scores[i])])
    assert picked == expected
    golds = [rows[i]["gold"][replies[i].index(t)] for i, t in enumerate(expected)]
    assert distilled["winner_gold_mean"] == pytest.approx(sum(golds) / 2)

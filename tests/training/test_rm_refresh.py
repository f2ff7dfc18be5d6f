"""The reward model refreshed during PPO (training/rm_refresh.py): comparisons from gold
labels, the Bradley-Terry fine-tune on a real (tiny) reward model, and PPO with
--rm-refresh-every end to end on the tiny model: logged, checkpointed, resumed, and written as
a reward-model entry trained for the policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.flags import ConfigError
from core.registry import Registry
from training import ppo
from training.ppo_config import PPOConfig
from training.reward import RewardModelScorer
from training.rm_refresh import Comparison, RewardRefresher, comparisons, pairwise_accuracy

MESSAGES = [{"role": "user", "content": "Say 7."}]


def test_comparisons_pair_every_reply_the_gold_reward_ranks() -> None:
    got = comparisons(MESSAGES, ["7", "8", "7", "x", "9"], [1.0, 0.0, 1.0, 0.0, 0.5])
    expected = {("7", "9"), ("7", "8"), ("7", "x"), ("9", "8"), ("9", "x")}
    assert {(c.chosen, c.rejected) for c in got} == expected
    assert comparisons(MESSAGES, ["a", "b"], [0.0, 0.0]) == []  # a tie says nothing


def test_pairwise_accuracy_counts_strict_wins() -> None:
    def by_length(items: list[tuple[object, str]]) -> list[float]:
        return [float(len(text)) for _, text in items]

    pairs = [
        Comparison(MESSAGES, "long one", "x"),
        Comparison(MESSAGES, "y", "longer"),
        Comparison(MESSAGES, "z", "w"),
    ]
    assert pairwise_accuracy(by_length, pairs) == pytest.approx(1 / 3)
    assert math.isnan(pairwise_accuracy(by_length, []))


def test_refresh_teaches_a_real_reward_model_the_gold_ranking(tiny: Registry) -> None:
    """On the tiny random reward model: digits chosen over letters. Before the refresh it
    ranks them at chance; after 30 Bradley-Terry steps it ranks every pair right."""
    scorer = RewardModelScorer(tiny.path_of("tiny-rm"))
    pairs = [
        Comparison([{"role": "user", "content": f"Say {i}."}], f"{i} {i * 7}", f"say {chr(97 + i % 26)}")
        for i in range(24)
    ]
    refresher = RewardRefresher(steps=30, batch_size=8, learning_rate=1e-3, seed=0)
    metrics = refresher.refresh(scorer, pairs)
    assert metrics["rm_refresh/pairs"] == 24 and metrics["rm_refresh/pairs_total"] == 24
    assert metrics["rm_refresh/accuracy_after"] == 1.0, metrics
    assert metrics["rm_refresh/accuracy_after"] > metrics["rm_refresh/accuracy_before"]
    assert not scorer.model.training  # back in eval mode for scoring


def test_refresh_needs_a_reward_model_and_gold_labels() -> None:
    with pytest.raises(ConfigError, match="needs --reward rm"):
        PPOConfig(name="p", rm_refresh_every=2)
    with pytest.raises(ConfigError, match="rm_refresh_k=1"):
        PPOConfig(name="p", reward="rm", reward_model="r", rm_refresh_every=2, rm_refresh_k=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_refreshes_its_reward_model_and_writes_it(tiny: Registry, tmp_path: Path) -> None:
    common = {
        "name": "t-ppo-refresh",
        "registry": str(tiny.root),
        "output_dir": str(tmp_path / "run"),
        "base": "tiny",
        "task": "digits",
        "reward": "rm",
        "reward_model": "tiny-rm",
        "rollout_backend": "hf",
        "batch_size": 8,
        "mini_batch_size": 8,
        "num_ppo_epochs": 1,
        "max_new_tokens": 8,
        "max_length": 64,
        "save_steps": 2,
        "rm_refresh_every": 1,
        "rm_refresh_prompts": 4,
        "rm_refresh_k": 3,
        "rm_refresh_steps": 2,
    }
    trainer = ppo.PPOTrainer(PPOConfig(max_steps=2, **common), tiny)
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert "rm_refresh/pairs" not in log[0]  # the first iteration uses the reward model as given
    assert log[1]["rm_refresh/pairs_total"] == log[1]["rm_refresh/pairs"] > 0
    assert 0.0 <= log[1]["rm_refresh/accuracy_before"] <= 1.0
    saved = tmp_path / "run" / "checkpoint-2" / "reward_model"
    assert (saved / "model.safetensors").is_file() and (saved / "comparisons.jsonl").is_file()

    resumed = ppo.PPOTrainer(PPOConfig(max_steps=3, resume=True, **common), tiny)
    assert resumed.refresher is not None and resumed.refresher.refreshes == 1
    assert len(resumed.refresher.buffer) == log[1]["rm_refresh/pairs_total"]
    metrics = resumed.train()
    assert metrics["rm_refresh/pairs_total"] > log[1]["rm_refresh/pairs_total"]  # the buffer grows
    resumed.save_entry(metrics)
    rm = Registry(tiny.root).load("t-ppo-refresh-rm")
    assert (rm.manifest.kind, rm.manifest.format, rm.manifest.parent) == ("rm", "full", "tiny-rm")
    assert rm.manifest.extra["trained_for"]["policy"] == "t-ppo-refresh"
    assert rm.manifest.extra["refreshes"] == 2
    # the written weights are the refreshed ones, not the start's
    fresh = RewardModelScorer(rm.path)([(MESSAGES, "7")])[0]
    original = RewardModelScorer(tiny.path_of("tiny-rm"))([(MESSAGES, "7")])[0]
    assert fresh != original

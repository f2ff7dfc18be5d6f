"""The learned reward refreshed during GRPO / RLOO (training/refreshed_reward.py): when it
refreshes and what it learns from (with fakes), the config's refusals, and real tiny-model
runs through TRL's trainers with a score model and with a generative verifier."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from core.flags import ConfigError
from core.registry import Registry
from training.grpo import run as run_grpo
from training.grpo_config import GRPOConfig
from training.refreshed_reward import RefreshedReward
from training.reward_fns import RewardModelReward
from training.rloo import run as run_rloo
from training.rloo_config import RLOOConfig
from training.tasks import get_task


class FakeScoreModel(RewardModelReward):
    """Fake learned reward: the completion's length; never loads a model."""

    def __init__(self) -> None:
        super().__init__("unused")

    def __call__(self, messages_list: Sequence[Any], completions: Sequence[str], examples: Any) -> list[Any]:
        return [float(len(c)) for c in completions]

    def loaded(self) -> Any:
        return "fake scorer"


class FakeRefresher:
    """Fake refresher: records what each refresh was given."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.given: list[list[Any]] = []
        self.refreshes = 0

    def refresh(self, scorer: Any, new: list[Any]) -> dict[str, float]:
        assert scorer == "fake scorer"
        self.given.append(new)
        self.refreshes += 1
        return {"rm_refresh/pairs": float(len(new))}


def test_refreshes_every_k_rounds_on_the_pairs_within_each_prompt(tmp_path: Path) -> None:
    """Rounds of 2 prompts x 3 completions (one right answer each): a refresh before rounds 3
    and 5 on the rounds since the last; a pair is two completions of one prompt that the gold
    labels rank, never completions of different prompts."""
    task = get_task("arithmetic")
    examples = task.examples("train", 2)
    refresher = FakeRefresher()
    log = tmp_path / "rm_refresh_log.jsonl"
    reward = RefreshedReward(FakeScoreModel(), task, refresher, every=2, log_path=log)  # type: ignore[arg-type]
    for _ in range(5):
        messages, completions, exs = [], [], []
        for e in examples:
            for reply in (str(e.meta["answer"]), str(e.meta["answer"] + 1), "no idea"):
                messages.append(task.messages(e))
                completions.append(reply)
                exs.append(e)
        assert reward(messages, completions, exs) == [float(len(c)) for c in completions]
    # each round: per prompt, right > both wrong ones (2 pairs; the two wrong ones tie at 0)
    assert [len(g) for g in refresher.given] == [2 * 2 * 2, 2 * 2 * 2]
    assert all(p.rejected_messages is None for g in refresher.given for p in g)
    assert len(refresher.pending) == 2 * 2  # round 5's, for a refresh that never came
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["step"] for row in logged] == [2.0, 4.0]  # rounds done before each refresh


def test_refresh_options_are_checked() -> None:
    base = {"name": "g", "task": "arithmetic"}
    with pytest.raises(ConfigError, match="needs --reward rm"):
        GRPOConfig(**base, rm_refresh_every=2)
    rm = {**base, "reward": "rm", "reward_model": "r"}
    with pytest.raises(ConfigError, match="rm_refresh_new_share=2"):
        RLOOConfig(**rm, rm_refresh_every=2, rm_refresh_new_share=2)
    with pytest.raises(ConfigError, match="rm_refresh_replay needs --rm-refresh-every"):
        GRPOConfig(**rm, rm_refresh_replay="pairs.jsonl")
    with pytest.raises(ConfigError, match="--resume"):
        GRPOConfig(**rm, rm_refresh_every=2, resume=True)
    with pytest.raises(ConfigError, match="needs --reward rm"):  # the reward model only logged
        GRPOConfig(**{**rm, "reward": "both", "rm_weight": 0.0}, rm_refresh_every=2)
    assert GRPOConfig(**rm, rm_refresh_every=2).rm_refresh_every == 2


TINY = {
    "batch_size": 4,
    "num_generations": 4,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 8,
    "max_length": 128,
    "learning_rate": 5e-3,
    "seed": 0,
    "max_steps": 2,
    "save_steps": 2,
    "reward": "rm",
    "rm_refresh_every": 1,
    "rm_refresh_steps": 2,
    "rm_refresh_learning_rate": 1e-3,
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_grpo_refreshes_a_score_model_and_writes_it(tiny: Registry, tmp_path: Path) -> None:
    run_grpo(
        GRPOConfig(
            name="t-grpo-refresh",
            base="tiny",
            task="digits",
            reward_model="tiny-rm",
            registry=str(tiny.root),
            output_dir=str(tmp_path / "run"),
            **TINY,
        )
    )
    log = [json.loads(line) for line in (tmp_path / "run" / "rm_refresh_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1.0]  # before the second round, on the first's pairs
    assert log[0]["rm_refresh/pairs"] >= 1 and 0.0 <= log[0]["rm_refresh/accuracy_before"] <= 1.0
    entry = Registry(tiny.root).load("t-grpo-refresh-rm")
    assert (entry.manifest.kind, entry.manifest.parent) == ("rm", "tiny-rm")
    assert entry.manifest.extra["trained_for"]["policy"] == "t-grpo-refresh"
    assert entry.manifest.extra["comparisons"] == log[0]["rm_refresh/pairs"]
    assert Registry(tiny.root).load("t-grpo-refresh").manifest.extra["rm_refreshes"] == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread")
def test_rloo_refreshes_a_verifier_on_the_checks_of_its_completions(
    tiny_verifier: Registry, tmp_path: Path
) -> None:
    run_rloo(
        RLOOConfig(
            name="t-rloo-verifier",
            base="tiny",
            task="arithmetic",
            reward_model="tiny-verifier",
            registry=str(tiny_verifier.root),
            output_dir=str(tmp_path / "run"),
            **TINY,
        )
    )
    log = [json.loads(line) for line in (tmp_path / "run" / "rm_refresh_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and 1 <= log[0]["rm_refresh/checks"] <= 16  # distinct completions of round 1
    entry = Registry(tiny_verifier.root).load("t-rloo-verifier-rm")
    assert (entry.manifest.kind, entry.manifest.parent) == ("verifier", "tiny-verifier")
    assert entry.manifest.extra["checks"] == log[0]["rm_refresh/checks"]
    assert entry.manifest.extra["verifier"] == {"task": "arithmetic"}

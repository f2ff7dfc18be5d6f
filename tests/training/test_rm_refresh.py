"""The reward model refreshed during PPO (training/rm_refresh.py): comparisons from gold
labels, the Bradley-Terry fine-tune on a real (tiny) reward model, and PPO with
--rm-refresh-every end to end on the tiny model: logged, checkpointed, resumed, and written as
a reward-model entry trained for the policy."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from core.flags import ConfigError
from core.registry import Registry
from training import ppo
from training.ppo_config import PPOConfig
from training.reward import RewardModelScorer
from training.rm_refresh import (
    Comparison,
    RewardRefresher,
    batch_comparisons,
    comparisons,
    pairwise_accuracy,
    read_comparisons,
    refresh_fits,
    replay_pairs,
)

MESSAGES = [{"role": "user", "content": "Say 7."}]


def test_comparisons_pair_every_reply_the_gold_reward_ranks() -> None:
    got = comparisons(MESSAGES, ["7", "8", "7", "x", "9"], [1.0, 0.0, 1.0, 0.0, 0.5])
    expected = {("7", "9"), ("7", "8"), ("7", "x"), ("9", "8"), ("9", "x")}
    assert {(c.chosen, c.rejected) for c in got} == expected
    assert comparisons(MESSAGES, ["a", "b"], [0.0, 0.0]) == []  # a tie says nothing


def test_batch_comparisons_pair_rollouts_across_prompts() -> None:
    """Every right rollout against every wrong one of the batch, whatever prompt each answers;
    the worse reply keeps its own prompt, None when it is the chosen one's."""
    other = [{"role": "user", "content": "Say 8."}]
    judged = [
        (MESSAGES, "7", 1.0),
        (MESSAGES, "1", 0.0),
        (other, "8", 1.0),
        (other, "2", 0.0),
        (other, "8", 1.0),
    ]
    got = batch_comparisons(judged)
    pairs = {
        (c.chosen, c.rejected, None if c.rejected_messages is None else c.rejected_messages[0]["content"])
        for c in got
    }
    expected = {("7", "1", None), ("7", "2", "Say 8."), ("8", "1", "Say 7."), ("8", "2", None)}
    assert pairs == expected and len(got) == 4  # "8" to "Say 8." twice counts once
    by_prompt = {(c.chosen, c.rejected) for c in got if c.rejected_messages is None}
    assert by_prompt == {(c.chosen, c.rejected) for c in comparisons(MESSAGES, ["7", "1"], [1.0, 0.0])} | {
        (c.chosen, c.rejected) for c in comparisons(other, ["8", "2"], [1.0, 0.0])
    }
    assert [c.rejected_item() for c in got if c.rejected == "2"] == [(other, "2"), (other, "2")]
    assert batch_comparisons([(MESSAGES, "a", 0.0), (other, "b", 0.0)]) == []


def test_pairwise_accuracy_scores_each_distinct_reply_once() -> None:
    """A batch's c x (n - c) comparisons share their n replies: each is scored once (the cost
    of the `before` accuracy grows with the rollouts, not with the pairs)."""
    calls: list[int] = []

    def by_length(items: list[tuple[object, str]]) -> list[float]:
        calls.append(len(items))
        return [float(len(text)) for _, text in items]

    judged = [(MESSAGES, "right" * (i + 1), 1.0) for i in range(3)] + [
        (MESSAGES, f"w{i}", 0.0) for i in range(5)
    ]
    pairs = batch_comparisons(judged)
    assert len(pairs) == 15 and pairwise_accuracy(by_length, pairs) == 1.0
    assert calls == [8]


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


def test_refresh_learns_cross_prompt_comparisons_and_keeps_them(tiny: Registry, tmp_path: Path) -> None:
    """--rm-refresh-pairs batch on the tiny random reward model: every digit reply above every
    letter reply of the batch, across prompts; the pairs (with the worse reply's own prompt)
    survive a checkpoint."""
    scorer = RewardModelScorer(tiny.path_of("tiny-rm"))
    judged = [([{"role": "user", "content": f"Say {i}."}], f"{i} {i * 7}", 1.0) for i in range(6)]
    judged += [([{"role": "user", "content": f"Name {i}."}], f"say {chr(97 + i)}", 0.0) for i in range(6)]
    pairs = batch_comparisons(judged)
    assert len(pairs) == 36 and all(p.rejected_messages is not None for p in pairs)
    refresher = RewardRefresher(steps=30, batch_size=8, learning_rate=1e-3, seed=0)
    metrics = refresher.refresh(scorer, pairs)
    assert metrics["rm_refresh/accuracy_after"] == 1.0, metrics
    scores = scorer([(m, r) for m, r, _ in judged])
    assert min(scores[:6]) > max(scores[6:])  # one scale across prompts: what PPO compares
    refresher.save(tmp_path, scorer)
    assert read_comparisons(tmp_path / "comparisons.jsonl") == pairs


def test_refresh_fits_when_the_previous_one_took_less_than_the_time_left() -> None:
    assert refresh_fits(None, 400.0)  # no --max-time-s
    assert refresh_fits(10.0, None)  # no refresh measured yet
    assert refresh_fits(400.0, 394.0)
    assert refresh_fits(394.0, 394.0)
    assert not refresh_fits(255.0, 394.0)
    assert not refresh_fits(-5.0, 1.0)  # already past the budget


def test_refresh_batches_mix_new_comparisons_with_the_pool() -> None:
    """new_share of every mini-batch from this refresh's comparisons, the rest from the buffer
    and the replayed pairs; no comparison twice in one batch."""
    replay = [Comparison(MESSAGES, f"r{i}", "x") for i in range(10)]
    old = [Comparison(MESSAGES, f"o{i}", "x") for i in range(6)]
    new = [Comparison(MESSAGES, f"n{i}", "x") for i in range(5)]
    refresher = RewardRefresher(
        steps=7, batch_size=8, learning_rate=1e-5, seed=3, new_share=0.5, replay=replay
    )
    refresher.buffer = list(old)
    batches = refresher.batches(new, random.Random(0))
    assert len(batches) == 7
    for batch in batches:
        chosen = [c.chosen for c in batch]
        assert len(batch) == 8 and len(set(map(id, batch))) == 8
        assert sum(c.startswith("n") for c in chosen) == 4  # drawn from `new` first
        assert all(c[0] in "ron" for c in chosen)
    seen = {c.chosen[0] for b in batches for c in b}
    assert seen == {"r", "o", "n"}  # the replay and the old buffer both feed the batches
    # new_share 0: the batch comes from the pool alone (here empty of new ones: not yet added)
    plain = RewardRefresher(steps=2, batch_size=4, learning_rate=1e-5, seed=3)
    assert plain.batches(new, random.Random(0)) == []  # nothing in the pool, nothing new drawn


def test_replay_pairs_reads_a_conversational_preference_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    row = {
        "prompt": MESSAGES,
        "chosen": [{"role": "assistant", "content": "7"}],
        "rejected": [{"role": "assistant", "content": "8"}],
    }
    path.write_text(json.dumps(row) + "\n")
    assert replay_pairs(path) == [Comparison(MESSAGES, "7", "8")]
    path.write_text(json.dumps({"prompt": "Say 7.", "chosen": "7", "rejected": "8"}) + "\n")
    with pytest.raises(ConfigError, match="conversational"):
        replay_pairs(path)


def test_refresh_needs_a_reward_model_and_gold_labels() -> None:
    with pytest.raises(ConfigError, match="needs --reward rm"):
        PPOConfig(name="p", rm_refresh_every=2)
    with pytest.raises(ConfigError, match="rm_refresh_k=1"):
        PPOConfig(name="p", reward="rm", reward_model="r", rm_refresh_every=2, rm_refresh_k=1)
    refresh = {"name": "p", "reward": "rm", "reward_model": "r", "rm_refresh_every": 2}
    with pytest.raises(ConfigError, match="rollouts_per_prompt >= 2"):
        PPOConfig(**refresh, rm_refresh_source="rollouts")
    with pytest.raises(ConfigError, match="rm_refresh_source='fresh'"):
        PPOConfig(**refresh, rm_refresh_source="fresh")
    with pytest.raises(ConfigError, match=r"rm_refresh_new_share=1\.5"):
        PPOConfig(**refresh, rm_refresh_new_share=1.5)
    with pytest.raises(ConfigError, match="rm_refresh_replay needs --rm-refresh-every"):
        PPOConfig(name="p", reward="rm", reward_model="r", rm_refresh_replay="pairs.jsonl")
    with pytest.raises(ConfigError, match="not a multiple of rollouts_per_prompt=3"):
        PPOConfig(name="p", batch_size=32, rollouts_per_prompt=3)
    ok = PPOConfig(**refresh, rm_refresh_source="rollouts", rollouts_per_prompt=4)
    assert ok.rm_refresh_source == "rollouts"
    with pytest.raises(ConfigError, match="rm_refresh_pairs='rollout'"):
        PPOConfig(**refresh, rm_refresh_source="rollouts", rm_refresh_pairs="rollout")
    with pytest.raises(ConfigError, match="needs --rm-refresh-source rollouts"):
        PPOConfig(**refresh, rm_refresh_pairs="batch")
    with pytest.raises(ConfigError, match="rm_refresh_pairs needs --rm-refresh-every"):
        PPOConfig(name="p", reward="rm", reward_model="r", rm_refresh_pairs="batch")
    across = PPOConfig(**refresh, rm_refresh_source="rollouts", rm_refresh_pairs="batch")
    assert across.rollouts_per_prompt == 1  # pairs across prompts need no groups


def tiny_refresh_run(tiny: Registry, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """PPOConfig options of a short refreshed run on the tiny model (`options` override)."""
    return {
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
        "rm_refresh_every": 1,
        "rm_refresh_steps": 2,
        **options,
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_refreshes_its_reward_model_and_writes_it(tiny: Registry, tmp_path: Path) -> None:
    common = tiny_refresh_run(
        tiny, tmp_path, name="t-ppo-refresh", save_steps=2, rm_refresh_prompts=4, rm_refresh_k=3
    )
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


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_refreshes_from_its_rollouts_with_replay(tiny: Registry, tmp_path: Path) -> None:
    """--rm-refresh-source rollouts: iterations of 2 prompts x 4 rollouts; the comparisons of
    each iteration's groups wait in `pending` and are what the next refresh trains on (no
    extra sampling); the replayed pairs are counted and kept out of the checkpointed buffer."""
    replay = tmp_path / "replay.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say {i}."}],
            "chosen": [{"role": "assistant", "content": f"{i}{i}"}],
            "rejected": [{"role": "assistant", "content": "ab"}],
        }
        for i in range(5)
    ]
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = PPOConfig(
        **tiny_refresh_run(
            tiny,
            tmp_path,
            name="t-ppo-rollouts",
            rollouts_per_prompt=4,
            save_steps=3,
            max_steps=3,
            rm_refresh_source="rollouts",
            rm_refresh_replay=str(replay),
            rm_refresh_new_share=0.5,
        )
    )
    trainer = ppo.PPOTrainer(config, tiny)
    prompts = trainer.batch_prompts(0)
    assert len(prompts) == 8 and len({p.id for p in prompts}) == 2
    assert [p.id for p in prompts[:4]] == [prompts[0].id] * 4  # a group sits together
    expected: list[int] = []
    original = trainer.rollout_comparisons

    def counted(rollouts: ppo.Rollouts, gold: list[float]) -> list[Comparison]:
        found = original(rollouts, gold)
        by_prompt: dict[str, list[float]] = {}
        for p, g in zip(rollouts.prompts, gold, strict=True):
            by_prompt.setdefault(p.id, []).append(g)
        if any(max(g) > min(g) for g in by_prompt.values()):
            assert found, "a group with different gold rewards gave no comparison"
        expected.append(len(found))
        return found

    trainer.rollout_comparisons = counted  # type: ignore[method-assign]
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert "rm_refresh/pairs" not in log[0]
    for i in (1, 2):  # refresh i trains on iteration i-1's rollouts, judged when rolled out
        assert log[i]["rm_refresh/pairs"] == expected[i - 1]
        assert log[i]["rm_refresh/replay_pairs"] == 5
    assert log[2]["rm_refresh/pairs_total"] == expected[0] + expected[1]
    saved = tmp_path / "run" / "checkpoint-3" / "reward_model"
    assert len((saved / "comparisons.jsonl").read_text().splitlines()) == expected[0] + expected[1]
    assert len((saved / "pending.jsonl").read_text().splitlines()) == expected[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_refreshes_from_pairs_across_its_batch(tiny: Registry, tmp_path: Path) -> None:
    """--rm-refresh-pairs batch with one rollout per prompt: each iteration's comparisons are
    every (right, wrong) pair of its 8 rollouts, counted here from the gold rewards alone."""
    config = PPOConfig(
        **tiny_refresh_run(
            tiny,
            tmp_path,
            name="t-ppo-batch-pairs",
            max_steps=2,
            rm_refresh_source="rollouts",
            rm_refresh_pairs="batch",
        )
    )
    trainer = ppo.PPOTrainer(config, tiny)
    assert len({p.id for p in trainer.batch_prompts(0)}) == 8
    expected: list[int] = []
    original = trainer.rollout_comparisons

    def counted(rollouts: ppo.Rollouts, gold: list[float]) -> list[Comparison]:
        found = original(rollouts, gold)
        best: dict[tuple[str, str], float] = {}
        for p, ids, g in zip(rollouts.prompts, rollouts.response_ids, gold, strict=True):
            key = (p.id, trainer.tokenizer.decode(ids, skip_special_tokens=True))
            best[key] = max(g, best.get(key, g))
        golds = list(best.values())
        expected.append(sum(a > b for a in golds for b in golds))
        return found

    trainer.rollout_comparisons = counted  # type: ignore[method-assign]
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert expected[0] > 0  # the seeded tiny run has right and wrong rollouts (13 pairs)
    assert log[1]["rm_refresh/pairs"] == expected[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
@pytest.mark.parametrize(("previous_s", "refreshes"), [(7200.0, 0), (1.0, 1)])
def test_ppo_skips_a_refresh_that_would_overrun_its_budget(
    tiny: Registry, tmp_path: Path, previous_s: float, refreshes: int
) -> None:
    """With an hour of --max-time-s, a refresh is skipped when the previous one took two hours
    and run when it took a second; a skipped one is logged and leaves the reward model as is."""
    config = PPOConfig(
        **tiny_refresh_run(
            tiny,
            tmp_path,
            name="t-ppo-fits",
            max_steps=2,
            max_time_s=3600,
            rm_refresh_prompts=4,
            rm_refresh_k=3,
        )
    )
    trainer = ppo.PPOTrainer(config, tiny)
    trainer.last_refresh_s = previous_s
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert trainer.refresher is not None and trainer.refresher.refreshes == refreshes
    assert ("rm_refresh/skipped" in log[1]) == (refreshes == 0)
    assert ("rm_refresh/pairs" in log[1]) == (refreshes == 1)

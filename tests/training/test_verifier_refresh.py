"""A generative verifier refreshed during PPO (training/verifier_refresh.py): checks from judged
rollouts, the fine-tune of a real (tiny) verifier on them, and PPO with a verifier reward and
--rm-refresh-every end to end: logged, checkpointed, resumed, written as a verifier entry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.flags import ConfigError
from core.registry import Registry
from training import ppo
from training.data import DataError
from training.ppo_config import PPOConfig
from training.tasks import get_task
from training.verifier import TransformersVerifier, sft_rows
from training.verifier_refresh import (
    Check,
    VerifierRefresher,
    check_loss,
    encode,
    read_checks,
    replay_checks,
    rollout_checks,
    verdict_accuracy,
)


def arithmetic_replies(n: int) -> list[tuple[Any, str, bool]]:
    """(example, reply, right) for n training prompts: the sum, and the sum off by ten."""
    task = get_task("arithmetic")
    out = []
    for e in task.examples("train", n):
        a, b = e.meta["a"], e.meta["b"]
        out += [(e, f"{a} + {b} = {a + b}", True), (e, f"The answer is {a + b + 10}.", False)]
    return out


def test_rollout_checks_label_each_distinct_reply_by_its_sum() -> None:
    task = get_task("arithmetic")
    replies = arithmetic_replies(3)
    judged = [(task.messages(e), r, e, 0.9 if right else 0.2) for e, r, right in replies]
    judged += [judged[0], (task.messages(replies[0][0]), "no example", None, 0.5)]
    checks = rollout_checks(task, judged)
    assert len(checks) == 6  # the repeat counted once, the reply without an example left out
    for check, (e, reply, right) in zip(checks, replies, strict=True):
        a, b = e.meta["a"], e.meta["b"]
        said = reply.rstrip(".").split()[-1]
        assert f"So {a} + {b} = {a + b}. The reply says {said}." in check.target
        assert check.target.endswith(" Verdict: right" if right else " Verdict: wrong")
        assert check.right is right and reply in check.content
        assert check.p_right == (0.9 if right else 0.2)


def test_verdict_accuracy_counts_scored_checks_only() -> None:
    checks = [
        Check("c1", "t", True, 0.9),
        Check("c2", "t", False, 0.7),  # a wrong reply the verifier calls right
        Check("c3", "t", False, 0.1),
        Check("c4", "t", True, None),  # replayed: never scored by this run
    ]
    assert verdict_accuracy(checks) == pytest.approx(2 / 3)
    assert math.isnan(verdict_accuracy(checks[3:]))


def test_replay_checks_read_verifier_rows_and_refuse_others(tmp_path: Path) -> None:
    task = get_task("arithmetic")
    rows = sft_rows(task, [(e, r) for e, r, _ in arithmetic_replies(2)])
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checks = replay_checks(path)
    assert [c.right for c in checks] == [True, False, True, False]
    assert all(c.p_right is None for c in checks)
    sft = tmp_path / "sft.jsonl"
    chat = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "hello"}],
    }
    sft.write_text(json.dumps(chat) + "\n")
    with pytest.raises(DataError, match="verifier rows"):
        replay_checks(sft)


# --------------------------------------------------------------------------- a tiny verifier


def reference_loss(model: Any, tokenizer: Any, check: Check) -> float:
    """Mean -log p of the target's tokens, one check, no padding: from the prompt's and the
    conversation's token ids, each scored at the position before it."""
    import torch

    user = [{"role": "user", "content": check.content}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": check.target}], tokenize=True, return_dict=False
    )
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    terms = [-float(logprobs[i - 1, full[i]]) for i in range(len(prompt), len(full))]
    return sum(terms) / len(terms)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread")
def test_refresh_fits_the_checks_of_a_real_verifier(tiny_verifier: Registry) -> None:
    task = get_task("arithmetic")
    scorer = TransformersVerifier(tiny_verifier.path_of("tiny-verifier"), batch_size=4)
    judged = [(task.messages(e), r, e, 0.5) for e, r, _ in arithmetic_replies(4)]
    checks = rollout_checks(task, judged)
    ids, n_prompt = encode(scorer.tokenizer, checks[0])
    assert scorer.tokenizer.decode(ids[n_prompt:]).startswith(checks[0].target)
    # the batched, padded loss is the mean of the per-token losses of each check
    loss = float(check_loss(scorer.model, scorer.tokenizer, checks[:1]).detach())
    assert loss == pytest.approx(reference_loss(scorer.model, scorer.tokenizer, checks[0]), rel=1e-4)

    refresher = VerifierRefresher(steps=20, batch_size=8, learning_rate=3e-3, seed=0)
    metrics = refresher.refresh(scorer, checks)
    assert metrics["rm_refresh/checks"] == 8 and metrics["rm_refresh/checks_wrong"] == 4
    assert metrics["rm_refresh/check_loss_after"] < 0.8 * metrics["rm_refresh/check_loss_before"], metrics
    assert not scorer.model.training  # back in eval mode for scoring
    assert refresher.buffer == checks


def tiny_verifier_run(registry: Registry, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """PPOConfig options of a short run of the tiny policy on arithmetic, rewarded by the tiny
    verifier and refreshing it every iteration from the rollouts (`options` override)."""
    return {
        "registry": str(registry.root),
        "output_dir": str(tmp_path / "run"),
        "base": "tiny",
        "task": "arithmetic",
        "reward": "rm",
        "reward_model": "tiny-verifier",
        "rollout_backend": "hf",
        "batch_size": 8,
        "mini_batch_size": 8,
        "num_ppo_epochs": 1,
        "max_new_tokens": 8,
        "max_length": 128,
        "rm_refresh_every": 1,
        "rm_refresh_steps": 2,
        "rm_refresh_learning_rate": 1e-3,
        "rm_refresh_source": "rollouts",
        "rm_refresh_pairs": "batch",
        **options,
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread")
def test_ppo_refreshes_a_verifier_and_writes_it(tiny_verifier: Registry, tmp_path: Path) -> None:
    """Each refresh trains on the distinct rollouts of the iterations before it (counted here
    from the decoded rollouts); the checks survive a checkpoint and a resume; the refreshed
    verifier is written as NAME-rm of kind verifier, with weights that are not the start's."""
    with pytest.raises(ConfigError, match="--rm-refresh-source rollouts"):
        ppo.PPOTrainer(
            PPOConfig(name="t", **tiny_verifier_run(tiny_verifier, tmp_path, rm_refresh_source="samples")),
            tiny_verifier,
        )
    common = tiny_verifier_run(tiny_verifier, tmp_path, name="t-ppo-verifier", save_steps=2)
    trainer = ppo.PPOTrainer(PPOConfig(max_steps=2, **common), tiny_verifier)
    distinct: list[int] = []
    original = trainer.rollout_refresh_items

    def counted(rollouts: ppo.Rollouts, judged: dict[str, list[float]]) -> list[Any]:
        texts = trainer.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
        distinct.append(len({(p.id, t) for p, t in zip(rollouts.prompts, texts, strict=True)}))
        return original(rollouts, judged)

    trainer.rollout_refresh_items = counted  # type: ignore[method-assign]
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert "rm_refresh/checks" not in log[0]  # the first iteration uses the verifier as given
    assert log[1]["rm_refresh/checks"] == log[1]["rm_refresh/checks_total"] == distinct[0]
    assert 0.0 <= log[1]["rm_refresh/verdict_accuracy_before"] <= 1.0
    saved = tmp_path / "run" / "checkpoint-2" / "reward_model"
    assert len(read_checks(saved / "checks.jsonl")) == distinct[0]
    assert len(read_checks(saved / "pending.jsonl")) == distinct[1]

    resumed = ppo.PPOTrainer(PPOConfig(max_steps=3, resume=True, **common), tiny_verifier)
    assert resumed.refresher is not None and resumed.refresher.refreshes == 1
    metrics = resumed.train()
    assert metrics["rm_refresh/checks_total"] == distinct[0] + distinct[1]
    resumed.save_entry(metrics)
    entry = Registry(tiny_verifier.root).load("t-ppo-verifier-rm")
    assert (entry.manifest.kind, entry.manifest.parent) == ("verifier", "tiny-verifier")
    assert entry.manifest.extra["trained_for"]["policy"] == "t-ppo-verifier"
    assert entry.manifest.extra["checks"] == distinct[0] + distinct[1]
    item = [(get_task("arithmetic").messages(arithmetic_replies(1)[0][0]), "7")]
    start = TransformersVerifier(tiny_verifier.path_of("tiny-verifier"))
    fresh = TransformersVerifier(entry.path)
    checks = rollout_checks_of(item)
    losses = [float(check_loss(v.model, v.tokenizer, checks).detach()) for v in (fresh, start)]
    assert losses[0] != losses[1]


def rollout_checks_of(items: list[tuple[list[dict[str, str]], str]]) -> list[Check]:
    task = get_task("arithmetic")
    example = task.examples("train", 1)[0]
    return rollout_checks(task, [(m, r, example, 0.5) for m, r in items])

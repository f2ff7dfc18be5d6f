"""RLHF's outer loop: the learned reward model refreshed on the policy's own samples while PPO
trains (training/ppo.py calls `RewardRefresher.refresh` every --rm-refresh-every iterations).

A reward model trained on one policy's samples loses its judgement on the samples of the policy
PPO makes from it: the policy moves to where the reward model was never taught, and the proxy
rises while the truth does not (measured with a frozen reward model: proxy 1.6 -> 3.6, gold
0.2-0.5, docs/benchmarks/training.md). The remedy of the InstructGPT line of work is to keep
collecting comparisons on the current policy and retrain. Here the task's gold labels stand in
for the human labellers:

1. the trainer samples --rm-refresh-k replies for --rm-refresh-prompts training prompts from the
   current policy and judges each with the gold verifier;
2. every pair of distinct replies of a prompt that the gold reward ranks is a comparison
   (`comparisons`: on a right/wrong task, every (correct, wrong) pair); they join the buffer of
   every comparison gathered so far;
3. the reward model's pairwise accuracy on the new comparisons is measured *before* it trains
   on them: on-policy and unseen, the honest number for how well it still judges this policy;
4. it is fine-tuned in place (full weights, the Bradley-Terry loss
   -log sigmoid(r_chosen - r_rejected), as TRL's RewardTrainer) for --rm-refresh-steps
   mini-batches drawn from the whole buffer, and its accuracy on the new comparisons measured
   again.

Two choices keep a refresh from replacing what the reward model knew with the few comparisons
of one refresh (the failure measured first: 6-17 new pairs, fitted perfectly, forgotten by the
next refresh): `--rm-refresh-source rollouts` takes the comparisons from PPO's own rollouts
(with --rollouts-per-prompt G >= 2 every iteration's groups are judged, so a refresh costs no
sampling and sees every rollout since the last one), and `--rm-refresh-replay FILE` puts the
pairs the reward model was first trained on into the pool every mini-batch draws from, while
`--rm-refresh-new-share` of each mini-batch comes from the new comparisons.

A third widens what a refresh learns from. Comparisons within one prompt are few when the policy
is mostly wrong (2-14 per refresh, measured): `--rm-refresh-pairs batch` pairs every better
rollout with every worse one of the same iteration, across prompts (`batch_comparisons`). PPO
compares the reward model's scores across prompts too (one normalisation, one value baseline),
so a reward model that ranks a right answer to one question above a wrong answer to another is
what it needs, and an iteration of 32 rollouts with c right answers gives c x (32 - c) pairs
(the verifiers of Cobbe et al. 2021 are trained on such per-sample labels, not within-prompt
pairs). Measured on arithmetic: 504-766 pairs a refresh, yet the refreshed run ended below the
same run with the reward model frozen (32.0% against 42.7%, docs/benchmarks/ppo_rm_refresh.md):
more pairs did not make a refresh generalise to the next iterations' rollouts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Comparison:
    """A better and a worse reply; `rejected_messages` is the worse reply's prompt when it
    answers another one (`batch_comparisons`), None when both answer `messages`."""

    messages: Messages
    chosen: str
    rejected: str
    rejected_messages: Messages | None = None

    def chosen_item(self) -> tuple[Messages, str]:
        return self.messages, self.chosen

    def rejected_item(self) -> tuple[Messages, str]:
        return self.rejected_messages or self.messages, self.rejected


def comparisons(messages: Messages, replies: Sequence[str], gold: Sequence[float]) -> list[Comparison]:
    """Every pair of distinct replies to one prompt whose gold rewards differ, the higher one
    chosen (a reply sampled twice counts once)."""
    return batch_comparisons([(messages, r, g) for r, g in zip(replies, gold, strict=True)])


def batch_comparisons(judged: Sequence[tuple[Messages, str, float]]) -> list[Comparison]:
    """Every pair of (prompt, reply) items of one batch whose gold rewards differ, across
    prompts, the higher one chosen (an item sampled twice counts once)."""
    best: dict[str, tuple[Messages, str, float]] = {}
    for messages, reply, g in judged:
        key = json.dumps([messages, reply])
        if key not in best or g > best[key][2]:
            best[key] = (messages, reply, g)
    ranked = sorted(best.values(), key=lambda item: (-item[2], json.dumps(item[:2])))
    return [
        Comparison(m_hi, hi, lo, None if m_lo == m_hi else m_lo)
        for i, (m_hi, hi, g_hi) in enumerate(ranked)
        for m_lo, lo, g_lo in ranked[i + 1 :]
        if g_hi > g_lo
    ]


def unique_items(pairs: Sequence[Comparison]) -> tuple[list[tuple[Messages, str]], list[tuple[int, int]]]:
    """The distinct (prompt, reply) items of `pairs` and each pair's (chosen, rejected) indices
    into them: a batch's c x (n - c) comparisons share n items, so each is scored once."""
    index: dict[str, int] = {}
    items: list[tuple[Messages, str]] = []

    def at(item: tuple[Messages, str]) -> int:
        key = json.dumps(item)
        if key not in index:
            index[key] = len(items)
            items.append(item)
        return index[key]

    return items, [(at(p.chosen_item()), at(p.rejected_item())) for p in pairs]


def pairwise_accuracy(scorer: Any, pairs: Sequence[Comparison]) -> float:
    """Share of pairs whose chosen reply the reward model scores higher (NaN with none)."""
    if not pairs:
        return float("nan")
    items, index = unique_items(pairs)
    scores = scorer(items)
    return sum(scores[c] > scores[r] for c, r in index) / len(pairs)


def refresh_fits(time_left: float | None, last_refresh_s: float | None) -> bool:
    """Whether to start a refresh with `time_left` seconds of --max-time-s left: not when the
    previous refresh took longer. The budget is checked between iterations, so a refresh that
    does not fit overshoots it and its reward model steers at most one update (measured: a
    394 s refresh in the last iteration took a 1600 s run to 1791 s); PPO iterations on the
    current reward model are the better use of the time left."""
    return time_left is None or last_refresh_s is None or last_refresh_s <= time_left


def bradley_terry_loss(chosen: Any, rejected: Any) -> Any:
    """-log sigmoid(r_chosen - r_rejected), averaged over the pairs."""
    import torch

    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


class RewardRefresher:
    """The comparison buffer and the fine-tuning of one in-memory reward model
    (training.reward.RewardModelScorer).

    `buffer` holds the on-policy comparisons gathered so far, `pending` those judged since the
    last refresh (the rollouts source fills it every iteration), `replay` the reward model's
    original training pairs (never checkpointed: they are re-read from their file)."""

    def __init__(
        self,
        steps: int,
        batch_size: int,
        learning_rate: float,
        seed: int,
        *,
        new_share: float = 0.0,
        replay: Sequence[Any] = (),
    ) -> None:
        self.steps, self.batch_size, self.learning_rate = steps, batch_size, learning_rate
        self.seed, self.new_share = seed, new_share
        self.replay = list(replay)
        self.buffer: list[Any] = []  # Comparisons here, Checks in VerifierRefresher
        self.pending: list[Any] = []
        self.refreshes = 0

    def batches(self, new: Sequence[Any], rng: random.Random) -> list[list[Any]]:
        """--rm-refresh-steps mini-batches: `new_share` of each from the new comparisons, the
        rest from everything known (buffer and replay), without repeats inside a batch."""
        pool = self.replay + self.buffer
        n_new = min(len(new), round(self.batch_size * self.new_share)) if new else 0
        out = []
        for _ in range(self.steps):
            batch = rng.sample(list(new), n_new) if n_new else []
            rest = min(self.batch_size - n_new, len(pool))
            out.append(batch + rng.sample(pool, rest))
        return [b for b in out if b]

    def fit(self, model: Any, batches: list[list[Any]], loss_of: Any) -> list[float]:
        """One AdamW step per mini-batch on `loss_of(batch)` (full weights, gradients clipped
        at 1), the model back in eval mode after; the losses."""
        import torch

        losses: list[float] = []
        if not batches:
            return losses
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate, weight_decay=0.0)
        model.train()
        for batch in batches:
            loss = loss_of(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        model.eval()
        return losses

    def refresh(self, scorer: Any, new: list[Comparison]) -> dict[str, float]:
        """Steps 3-4 of the module docstring; the metrics, under `rm_refresh/`."""
        import torch

        before = pairwise_accuracy(scorer, new)
        self.buffer.extend(new)
        self.refreshes += 1
        rng = random.Random(self.seed * 7_919 + self.refreshes)

        def loss_of(batch: list[Comparison]) -> Any:
            items, index = unique_items(batch)
            scores = scorer.scores(items)
            chosen, rejected = (scores[torch.tensor(side)] for side in zip(*index, strict=True))
            return bradley_terry_loss(chosen, rejected)

        losses = self.fit(scorer.model, self.batches(new, rng), loss_of)
        return {
            "rm_refresh/pairs": float(len(new)),
            "rm_refresh/pairs_total": float(len(self.buffer)),
            "rm_refresh/replay_pairs": float(len(self.replay)),
            "rm_refresh/accuracy_before": before,
            "rm_refresh/accuracy_after": pairwise_accuracy(scorer, new),
            "rm_refresh/loss": sum(losses) / len(losses) if losses else float("nan"),
        }

    # --- checkpoints: the buffer beside the reward model's weights --------------------------

    buffer_file = "comparisons.jsonl"

    @staticmethod
    def to_row(item: Any) -> dict[str, Any]:
        """One buffered comparison as the JSON row `read_rows` reads back."""
        row = {"messages": item.messages, "chosen": item.chosen, "rejected": item.rejected}
        if item.rejected_messages is not None:
            row["rejected_messages"] = item.rejected_messages
        return row

    @staticmethod
    def read_rows(path: Path) -> list[Any]:
        return read_comparisons(path)

    def save(self, directory: Path, scorer: Any) -> None:
        scorer.model.save_pretrained(directory, safe_serialization=True)
        scorer.tokenizer.save_pretrained(directory)
        for name, items in ((self.buffer_file, self.buffer), ("pending.jsonl", self.pending)):
            with (directory / name).open("w") as f:
                f.writelines(json.dumps(self.to_row(item)) + "\n" for item in items)
        (directory / "refresh_state.json").write_text(json.dumps({"refreshes": self.refreshes}))

    def load(self, directory: Path) -> None:
        self.buffer = self.read_rows(directory / self.buffer_file)
        pending = directory / "pending.jsonl"
        self.pending = self.read_rows(pending) if pending.is_file() else []
        self.refreshes = int(json.loads((directory / "refresh_state.json").read_text())["refreshes"])


def read_comparisons(path: Path) -> list[Comparison]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [Comparison(r["messages"], r["chosen"], r["rejected"], r.get("rejected_messages")) for r in rows]


def replay_pairs(path: str | Path) -> list[Comparison]:
    """A reward model's training pairs (a preference file `bonserve train rm` reads, in the
    conversational format) as comparisons: prompt messages, chosen and rejected reply texts."""
    from core.flags import ConfigError
    from training.data import load_preference_data

    rows, _ = load_preference_data(path)
    out = []
    for i, row in enumerate(rows, start=1):
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if not (isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list)):
            raise ConfigError(f"{path}: row {i}: replay pairs must be conversational (message lists)")
        out.append(Comparison(prompt, chosen[-1]["content"], rejected[-1]["content"]))
    return out


def refresher_for(config: Any, *, verifier: bool) -> RewardRefresher:
    """The refresher `config`'s --rm-refresh-* options describe (training/rm_refresh_config.py):
    comparisons for a score model, checks for a generative verifier (verifier_refresh.py), each
    with the rows its --rm-refresh-replay file holds."""
    options = {
        "steps": config.rm_refresh_steps,
        "batch_size": config.rm_refresh_batch_size,
        "learning_rate": config.rm_refresh_learning_rate,
        "seed": config.seed,
        "new_share": config.rm_refresh_new_share,
    }
    replay_file = config.rm_refresh_replay
    if not verifier:
        return RewardRefresher(**options, replay=replay_pairs(replay_file) if replay_file else ())
    from training.verifier_refresh import VerifierRefresher, replay_checks

    return VerifierRefresher(**options, replay=replay_checks(replay_file) if replay_file else ())


def save_refreshed_entry(
    registry: Any,
    config: Any,
    refresher: RewardRefresher,
    scorer: Any,
    *,
    data_hash: str,
    metrics: dict[str, float],
) -> Any:
    """The reward model refreshed while training the policy `config.name` as registry entry
    NAME-rm: full weights, the kind it started as (rm or verifier), parent the entry it started
    from, trained_for the policy at its sampling temperature (what the server pairs it with)."""
    import dataclasses

    from core.registry import Manifest
    from training.generation import resolve_reward_model

    start = resolve_reward_model(registry, config.reward_model)
    verifier = start.manifest.kind == "verifier"
    refresh_keys = [k for k in dataclasses.asdict(config) if k.startswith("rm_refresh_")]
    manifest = Manifest(
        name=f"{config.name}-rm",
        kind=start.manifest.kind,
        format="full",
        base_model=start.manifest.base_model,
        parent=start.name,
        data_hash=data_hash,
        hyperparameters={k: getattr(config, k) for k in [*refresh_keys, "seed"]},
        metrics=metrics,
        extra={
            "trained_for": {
                "policy": config.name,
                "temperature": config.temperature,
                "policies": [config.name],
                "temperatures": [config.temperature],
            },
            "refreshed_during": config.name,
            "refreshes": refresher.refreshes,
            ("checks" if verifier else "comparisons"): len(refresher.buffer),
            **({"verifier": {"task": config.task}} if verifier else {}),
        },
    )
    with registry.write(manifest) as staging:
        scorer.model.save_pretrained(staging, safe_serialization=True)
        scorer.tokenizer.save_pretrained(staging)
    print(f"[{config.name}] wrote refreshed reward model {manifest.name!r}", flush=True)
    return registry.load(manifest.name)

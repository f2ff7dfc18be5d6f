"""RLHF with PPO: policy, value head, frozen reward, reference policy, per-token KL penalty.

TRL removed its PPOTrainer (deleted by 1.16), so the loop lives here; it follows TRL's former
PPOTrainer and the checklist of "The N Implementation Details of RLHF with PPO" (Huang et al.
2024). One iteration (`--max-steps` counts them; `PPOTrainer.step` reads in this order):

1. rollouts: `--batch-size` sampled responses at `--temperature` (one per prompt, or
   `--rollouts-per-prompt` of each of fewer prompts), by vLLM
   with the current LoRA adapter loaded into the engine (a new adapter id per iteration), or
   by HF `generate` on the training module. `--rollout-backend auto` takes vLLM for LoRA on a
   GPU and HF otherwise: on CPU vLLM's LoRA decoding measured 0.55x HF generate, and --full
   would need the engine's weights reloaded every iteration. Each response is cut after its
   first end-of-turn token;
2. score: the task's gold verifier or the reward model on the decoded response; responses
   that never emit the end token get `--missing-eos-penalty` subtracted; optional
   normalisation with gain/bias fixed on the first batch (the starting policy's samples);
3. log-probabilities recomputed with transformers under the policy and the reference (never
   vLLM's: the ratio must start at exactly 1), at the sampling temperature, and values from
   the value head;
4. per-token reward -kl_coef * KL_t with the score added on the last token; GAE advantages,
   whitened; `--num-ppo-epochs` passes over the batch in shuffled `--mini-batch-size`
   mini-batches with the clipped policy loss + vf_coef * clipped value loss;
5. the KL coefficient stays fixed, or adapts toward `--target-kl` (Ziegler et al. 2019).

With `--reward rm --rm-refresh-every K` the reward model is not frozen: before every K-th
iteration the current policy's replies to training prompts (fresh samples, or with
`--rm-refresh-source rollouts` the rollouts since the last refresh) are judged with the task's
gold labels, and the reward model is fine-tuned on the comparisons gathered so far, optionally
beside the pairs it was first trained on (training/rm_refresh.py); its on-policy pairwise
accuracy before and after each refresh is
logged (`rm_refresh/...`), and the refreshed reward model is written as entry NAME-rm, marked
as trained for the policy NAME (what the server pairs it with). A generative verifier as the
reward model is refreshed on the worked checks of the judged rollouts instead of comparisons
(training/verifier_refresh.py) and written as NAME-rm of kind verifier.

The four roles: the policy is a LoRA adapter on --base (or full weights); the reference is
--base itself — the same module with the adapter disabled, no second copy — except with
--full or a LoRA --base, which keep a frozen copy; the value head is a linear layer on the
policy's last hidden state (one backbone pass gives logits and values; the cheap choice on
CPU — the value loss also trains the shared adapter, weighted by --vf-coef); the reward is
frozen unless --rm-refresh-every (above).

Metrics keep TRL's names (`objective/kl`, `objective/scores`, `objective/rlhf_reward`,
`policy/approxkl_avg`, `policy/clipfrac_avg`, `val/vpred`, `val/clipfrac_avg`, ...), are
printed and appended to RUN_DIR/ppo_log.jsonl. When a gold verifier exists it is always
logged (`rewards/gold/mean`) beside the learned reward (`rewards/rm/mean`), so reward
hacking shows as the two curves parting. Checkpoints (adapter, value head, optimizer, KL
coefficient, score normalisation) are written every --save-steps; --resume continues.

Under `accelerate launch` / `torchrun` (N processes) the same loop runs data-parallel: each
iteration's prompts are split across the processes, each samples, scores and computes
advantages on its share (whitened per process, as TRL's PPOTrainer did), the gradients of each
mini-batch are averaged across processes before the optimizer step (training/collective.py),
and the KL controller, score normalisation and logged metrics use the global batch, so the
weights stay identical everywhere (checked at every checkpoint). `--batch-size` and
`--mini-batch-size` stay global; rank 0 writes the log, the checkpoints and the one entry.
Rollouts use HF generate there (one vLLM engine per process is refused).

Where the parts live: training/ppo_config.py (the options), training/ppo_rollouts.py (step 1:
the vLLM and HF backends; padding, packing and the forward pass over a packed batch used in
steps 3-4), training/ppo_math.py (the pure tensor math of
steps 4-5), this file (the trainer: scoring, the update, checkpoints, the entry); the
command line is training/scripts/ppo.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.flags import ConfigError
from core.registry import Entry, Registry
from training import common
from training.collective import Processes
from training.common import load_causal_lm, load_tokenizer, lora_config, prepare_run_dir, resolve_start
from training.ppo_config import PPOConfig
from training.ppo_rollouts import Batch, HFRollouts, Rollouts, VLLMRollouts, forward
from training.prompts import Prompt, load_prompts
from training.rm_refresh import (
    Comparison,
    RewardRefresher,
    batch_comparisons,
    comparisons,
    refresh_fits,
    refresher_for,
    save_refreshed_entry,
)

LOG_FILE = "ppo_log.jsonl"
STAT_KEYS = (
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
    "val/vpred",
)


# --------------------------------------------------------------------------- rewards (step 2)


class Scorer:
    """Scores of decoded responses by every available judge (training.reward_fns): `gold`
    when the prompts carry a task example, `rm` when a reward model is given. PPO trains on
    config.reward; the others are logged so a proxy reward can be watched against the truth."""

    def __init__(self, config: PPOConfig, registry: Registry):
        from training.reward_fns import build_reward_functions
        from training.tasks import get_task

        task = get_task(config.task) if config.task else None
        self.functions = build_reward_functions(
            task,
            config.reward_model,
            registry,
            gold_weight=1.0 if config.reward == "gold" else 0.0,
            rm_weight=1.0 if config.reward == "rm" else 0.0,
        )

    def function(self, name: str) -> Any:
        """The judge logged as `name` ('gold', 'rm')."""
        return next(fn for fn in self.functions if fn.name == name)

    def __call__(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> dict[str, list[float]]:
        messages = [p.messages for p in prompts]
        examples = [p.example for p in prompts]
        out = {}
        for fn in self.functions:
            scores = fn(messages, texts, examples)
            if any(s is None for s in scores):
                raise ConfigError(f"reward {fn.name!r} cannot score every prompt (some have no task example)")
            out[fn.name] = [float(s) for s in scores]
        return out


# --------------------------------------------------------------------------- step 3's outputs


@dataclass
class OldOutputs:
    """The batch under the policy that sampled it (pi_old) and under the reference: fixed for
    the whole update, [B, R] each and zero after a response ends."""

    logprobs: Any
    values: Any
    ref_logprobs: Any


# --------------------------------------------------------------------------- the trainer


@dataclass
class PPOState:
    """What a checkpoint stores besides weights and optimizer."""

    step: int = 0
    episode: int = 0
    kl_coef: float = 0.05
    score_bias: float | None = None
    score_gain: float | None = None


class PPOTrainer:
    """The loop of the module docstring; `train()` runs it, `save_entry()` writes the result."""

    def __init__(self, config: PPOConfig, registry: Registry):
        import torch

        from training.ppo_math import AdaptiveKLController, FixedKLController

        self.config, self.registry = config, registry
        self.start = resolve_start(registry, config.base)
        self.prompts = load_prompts(
            task=config.task, split=config.split, n=config.n_prompts, path=config.data
        )
        if not self.prompts:
            raise ConfigError("no prompts: the task split or --data file is empty")
        if config.batch_size > len(self.prompts):
            raise ConfigError(
                f"batch_size={config.batch_size} is larger than the {len(self.prompts)} prompts"
            )
        self.digest = _prompts_hash(self.prompts)
        self.run_dir = prepare_run_dir(config, self.digest)
        self.procs = Processes.current()
        _check_processes(config, self.procs.world)
        self.scorer = Scorer(config, registry)
        self.refresher = self._refresher() if config.rm_refresh_every else None
        self.last_refresh: dict[str, float] = {}
        self.deadline: float | None = None  # time.monotonic() at which --max-time-s runs out
        self.last_refresh_s: float | None = None  # how long the previous refresh took
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(self.start)
        self.stop_ids = {self.tokenizer.eos_token_id}
        self.policy, self.ref = self._build_policy()
        hidden = self.policy.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = self._trainable()
        self.procs.broadcast_parameters(params)  # every process starts from rank 0's weights
        # Adam eps 1e-5 (not 1e-8): one of the PPO details that matter for stability.
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
        self.state = PPOState(kl_coef=config.kl_coef)
        if config.resume:
            self._load_checkpoint()
        self.kl_ctl = (
            AdaptiveKLController(self.state.kl_coef, config.target_kl, config.kl_horizon)
            if config.target_kl
            else FixedKLController(self.state.kl_coef)
        )
        self.query_ids = {
            p.id: _prompt_ids(self.tokenizer, p.messages, config.max_length) for p in self.prompts
        }

    def _refresher(self) -> RewardRefresher:
        """What refreshes the learned reward: a score model on comparisons (rm_refresh.py), a
        generative verifier on single judged rollouts (verifier_refresh.py)."""
        config = self.config
        if self.verifier_refresh and config.rm_refresh_source != "rollouts":
            raise ConfigError(
                f"reward_model={config.reward_model!r} is a generative verifier: it refreshes on the "
                "rollouts PPO already judged and scored, --rm-refresh-source rollouts"
            )
        return refresher_for(config, verifier=self.verifier_refresh)

    @property
    def verifier_refresh(self) -> bool:
        """Whether the learned reward being refreshed is a generative verifier."""
        from training.reward_fns import VerifierReward

        return bool(self.config.rm_refresh_every) and isinstance(self.scorer.function("rm"), VerifierReward)

    # --- models ---------------------------------------------------------------------------

    def _trainable(self) -> list[Any]:
        """What the optimizer updates: the adapter (or full weights) and the value head."""
        return [p for p in self.policy.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def _build_policy(self) -> tuple[Any, Any]:
        """(policy, reference); the reference is None when it is the policy with its adapter
        disabled."""
        config, start = self.config, self.start
        if config.full:
            policy = load_causal_lm(start, trainable_adapter=False)
            ref = load_causal_lm(start, trainable_adapter=False)
        elif start.is_lora:
            policy = load_causal_lm(start, trainable_adapter=True)
            ref = load_causal_lm(start, trainable_adapter=False)
        else:
            from peft import get_peft_model

            policy = get_peft_model(
                load_causal_lm(start, trainable_adapter=False), lora_config(config, "CAUSAL_LM")
            )
            ref = None
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        policy.eval()  # no dropout anywhere: rollout and update log-probs must agree
        if ref is not None:
            ref.eval().requires_grad_(False)
        return policy, ref

    def _ref_logprobs(self, batch: Batch) -> Any:
        if self.ref is not None:
            return forward(self.ref, None, batch, self.config.temperature, with_values=False)["logprobs"]
        with self.policy.disable_adapter():
            return forward(self.policy, None, batch, self.config.temperature, with_values=False)["logprobs"]

    # --- one iteration, in the order of the algorithm -------------------------------------

    def step(self, rollouts: Rollouts) -> dict[str, float]:
        """Steps 2-5 of the module docstring on one batch of rollouts (step 1); the metrics."""
        batch = Batch.pack(rollouts, self.tokenizer.pad_token_id)
        scores, judged = self.score(rollouts)
        if self.refresher is not None and self.config.rm_refresh_source == "rollouts":
            self.refresher.pending += self.rollout_refresh_items(rollouts, judged)
        old = self.old_outputs(batch)
        kl_coef = self.kl_ctl.value
        rewards, non_score = self.token_rewards(scores, old, batch.mask, kl_coef)
        advantages, returns = self.advantages(rewards, old.values, batch.mask)
        stats = self.update(batch, old, advantages, returns)
        kl = self.adapt_kl(old, batch.mask)
        return self.metrics(rollouts, batch, scores, judged, old, non_score, kl, kl_coef, stats)

    def batch_prompts(self, step: int) -> list[Prompt]:
        """Deterministic in (seed, step): a fresh shuffle of all prompts each epoch over them,
        each prompt repeated --rollouts-per-prompt times (next to each other)."""
        group = self.config.rollouts_per_prompt
        n, size = len(self.prompts), self.config.batch_size // group
        out = []
        for i in range(step * size, (step + 1) * size):
            order = list(range(n))
            random.Random(self.config.seed * 7919 + i // n).shuffle(order)
            out += [self.prompts[order[i % n]]] * group
        return out

    def rollout_refresh_items(self, rollouts: Rollouts, judged: dict[str, list[float]]) -> list[Any]:
        """What the next refresh learns from in this iteration's rollouts: comparisons for a
        score model, a check per distinct rollout (with the verifier's p(right)) for a verifier."""
        if not self.verifier_refresh:
            return self.rollout_comparisons(rollouts, judged["gold"])
        from training.verifier_refresh import rollout_checks

        texts = self.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
        items = zip(rollouts.prompts, texts, judged["rm"], strict=True)
        return rollout_checks(
            self.scorer.function("gold").task, [(p.messages, t, p.example, rm) for p, t, rm in items]
        )

    def rollout_comparisons(self, rollouts: Rollouts, gold: Sequence[float]) -> list[Comparison]:
        """Every (better, worse) pair of distinct replies among one prompt's rollouts, ranked by
        the gold verifier: the refresh comparisons of --rm-refresh-source rollouts. With
        --rm-refresh-pairs batch, every such pair among all of the iteration's rollouts."""
        if self.config.rm_refresh_pairs == "batch":
            texts = self.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
            return batch_comparisons(
                [(p.messages, t, g) for p, t, g in zip(rollouts.prompts, texts, gold, strict=True)]
            )
        groups: dict[str, tuple[Prompt, list[str], list[float]]] = {}
        for prompt, ids, g in zip(rollouts.prompts, rollouts.response_ids, gold, strict=True):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            _, texts, golds = groups.setdefault(prompt.id, (prompt, [], []))
            texts.append(text)
            golds.append(g)
        return [c for p, texts, golds in groups.values() for c in comparisons(p.messages, texts, golds)]

    def refresh_reward_model(self, step: int) -> dict[str, float]:
        """The outer loop (training/rm_refresh.py): --rm-refresh-k samples of the current policy
        for --rm-refresh-prompts training prompts (HF generate on the training module), judged
        by the gold verifier, every (correct, wrong) pair added, the reward model fine-tuned.
        With --rm-refresh-source rollouts the comparisons are those of the rollouts since the
        last refresh (`step` judged them), and nothing is sampled here."""
        from training.ppo_math import cut_at_stop

        config, refresher = self.config, self.refresher
        assert refresher is not None
        if config.rm_refresh_source == "rollouts":  # judged as they were rolled out
            new, refresher.pending = refresher.pending, []
            return self._refreshed(refresher.refresh(self.scorer.function("rm").loaded(), new))
        rng = random.Random(config.seed * 104_729 + step)
        prompts = rng.sample(self.prompts, min(config.rm_refresh_prompts, len(self.prompts)))
        k = config.rm_refresh_k
        queries = [self.query_ids[p.id] for p in prompts for _ in range(k)]
        raw = HFRollouts(config, self.tokenizer).generate(self.policy, queries, 1_000_000 + step)
        texts = [
            self.tokenizer.decode(cut_at_stop(r, self.stop_ids)[0], skip_special_tokens=True) for r in raw
        ]
        many = [p for p in prompts for _ in range(k)]
        gold = self.scorer.function("gold")([p.messages for p in many], texts, [p.example for p in many])
        new = []
        for i, p in enumerate(prompts):
            new += comparisons(p.messages, texts[i * k : (i + 1) * k], gold[i * k : (i + 1) * k])
        metrics = refresher.refresh(self.scorer.function("rm").loaded(), new)
        metrics["rm_refresh/gold_mean"] = sum(gold) / len(gold)
        return self._refreshed(metrics)

    def _refreshed(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.config.normalize_scores:  # the scale moved: fix gain and bias again on the next batch
            self.state.score_bias = self.state.score_gain = None
        self.last_refresh = metrics
        return metrics

    def rollout(self, roller: Any, step: int) -> Rollouts:
        """1. One sampled response per prompt of this iteration, cut after its first end token."""
        from training.ppo_math import cut_at_stop

        prompts = self.procs.shard(self.batch_prompts(step))  # this process's share
        queries = [self.query_ids[p.id] for p in prompts]
        raw = roller.generate(self.policy, queries, step)
        cut = [cut_at_stop(r, self.stop_ids) for r in raw]
        return Rollouts(prompts, queries, [c[0] for c in cut], [c[1] for c in cut])

    def score(self, rollouts: Rollouts) -> tuple[Any, dict[str, list[float]]]:
        """2. (the training score per rollout, every judge's raw scores for the metrics)."""
        import torch

        config = self.config
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in rollouts.response_ids]
        judged = self.scorer(rollouts.prompts, texts)
        scores = torch.tensor(judged[config.reward], dtype=torch.float32)
        if config.normalize_scores:
            if self.state.score_bias is None:  # from the whole first batch, every process's share
                everyone = self.procs.gather(scores)
                self.state.score_bias = float(everyone.mean())
                self.state.score_gain = 1.0 / max(float(everyone.std()), 1e-6)
            scores = (scores - self.state.score_bias) * self.state.score_gain
        ended = torch.tensor(rollouts.ended)
        return scores - config.missing_eos_penalty * (~ended).float(), judged

    def old_outputs(self, batch: Batch) -> OldOutputs:
        """3. Log-probs and values under the sampling policy, log-probs under the reference,
        in chunks of --forward-batch-size rows."""
        import torch

        size, chunk = batch.response.shape[0], self.config.forward_batch_size
        parts = [batch.select(slice(i, i + chunk)) for i in range(0, size, chunk)]
        with torch.no_grad():
            policy = [
                forward(self.policy, self.value_head, p, self.config.temperature, with_values=True)
                for p in parts
            ]
            ref_logprobs = torch.cat([self._ref_logprobs(p) for p in parts]) * batch.mask
        return OldOutputs(
            logprobs=torch.cat([p["logprobs"] for p in policy]) * batch.mask,
            values=torch.cat([p["values"] for p in policy]) * batch.mask,
            ref_logprobs=ref_logprobs,
        )

    def token_rewards(self, scores: Any, old: OldOutputs, mask: Any, kl_coef: float) -> tuple[Any, Any]:
        """4a. Per-token rewards: -kl_coef * KL_t, plus the score on the last token; and the KL
        part alone (the "non-score" reward)."""
        from training.ppo_math import masked_whiten, token_rewards

        config = self.config
        rewards, non_score = token_rewards(
            scores, old.logprobs, old.ref_logprobs, mask, kl_coef, config.kl_estimator
        )
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        return rewards, non_score

    def advantages(self, rewards: Any, values: Any, mask: Any) -> tuple[Any, Any]:
        """4b. GAE advantages (whitened over the batch) and the value targets."""
        from training.ppo_math import gae, masked_whiten

        advantages, returns = gae(rewards, values, mask, self.config.gamma, self.config.lam)
        return masked_whiten(advantages, mask) * mask, returns

    def update(self, batch: Batch, old: OldOutputs, advantages: Any, returns: Any) -> dict[str, list[float]]:
        """4c. --num-ppo-epochs passes over the batch in shuffled mini-batches, one optimizer
        step each (accumulated over --gradient-accumulation-steps micro-batches; under N
        processes each takes 1/N of every mini-batch from its share)."""
        import torch

        config = self.config
        size = batch.response.shape[0]
        mini = config.mini_batch_size // self.procs.world
        micro = mini // config.gradient_accumulation_steps
        stats: dict[str, list[float]] = {k: [] for k in STAT_KEYS}
        generator = torch.Generator().manual_seed(config.seed * 31 + self.state.step)
        for _ in range(config.num_ppo_epochs):
            order = torch.randperm(size, generator=generator)
            for m in range(0, size, mini):
                for u in range(m, m + mini, micro):
                    idx = order[u : u + micro]
                    self._backward(batch.select(idx), old, advantages[idx], returns[idx], idx, stats)
                self._optimizer_step()
        return stats

    def _backward(
        self,
        sub: Batch,
        old: OldOutputs,
        advantages: Any,
        returns: Any,
        idx: Any,
        stats: dict[str, list[float]],
    ) -> None:
        """Clipped policy loss + vf_coef * clipped value loss on one micro-batch; gradients
        accumulate, the micro-batch's statistics are appended to `stats`."""
        import torch

        from training.ppo_math import masked_mean, policy_loss, value_loss

        config = self.config
        new = forward(
            self.policy, self.value_head, sub, config.temperature, with_values=True, with_entropy=True
        )
        new_logprobs = new["logprobs"] * sub.mask
        pl = policy_loss(new_logprobs, old.logprobs[idx], advantages, sub.mask, config.cliprange)
        vl = value_loss(new["values"], old.values[idx], returns, sub.mask, config.cliprange_value)
        loss = (pl["loss"] + config.vf_coef * vl["loss"]) / config.gradient_accumulation_steps
        loss.backward()
        with torch.no_grad():
            for key, value in (
                ("policy/approxkl_avg", pl["approxkl"]),
                ("policy/clipfrac_avg", pl["clipfrac"]),
                ("loss/policy_avg", pl["loss"]),
                ("loss/value_avg", vl["loss"]),
                ("val/clipfrac_avg", vl["clipfrac"]),
                ("val/ratio", pl["ratio"]),
                ("policy/entropy_avg", masked_mean(new["entropy"], sub.mask)),
                ("val/vpred", masked_mean(new["values"], sub.mask)),
            ):
                stats[key].append(float(value))

    def _optimizer_step(self) -> None:
        import torch

        self.procs.average_gradients(p for g in self.optimizer.param_groups for p in g["params"])
        torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], self.config.max_grad_norm
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def adapt_kl(self, old: OldOutputs, mask: Any) -> Any:
        """5. The KL controller sees this batch's per-sequence KL (k1); the iteration counts.
        Returns that KL, [B]."""
        import torch

        from training.ppo_math import kl_estimate

        with torch.no_grad():
            kl = (kl_estimate(old.logprobs, old.ref_logprobs, "k1") * mask).sum(1)
        size = mask.shape[0] * self.procs.world  # the global batch
        self.kl_ctl.update(float(self.procs.mean(kl.mean())), size)
        self.state.kl_coef = self.kl_ctl.value
        self.state.step += 1
        self.state.episode += size
        return kl

    def metrics(
        self,
        rollouts: Rollouts,
        batch: Batch,
        scores: Any,
        judged: dict[str, list[float]],
        old: OldOutputs,
        non_score: Any,
        kl: Any,
        kl_coef: float,
        stats: dict[str, list[float]],
    ) -> dict[str, float]:
        """The iteration's metrics, under TRL's names."""
        import torch

        non_score_sum = non_score.sum(1)
        ended = torch.tensor(rollouts.ended)
        ratios = stats["val/ratio"]
        metrics = {
            "objective/kl": float(kl.mean()),
            "objective/entropy": float((-old.logprobs).sum(1).mean()),
            "objective/non_score_reward": float(non_score_sum.mean()),
            "objective/scores": float(scores.mean()),
            "objective/rlhf_reward": float((scores + non_score_sum).mean()),
            "objective/kl_coef": kl_coef,
            "val/ratio_var": float(torch.tensor(ratios).var()) if len(ratios) > 1 else 0.0,
            "val/num_eos_tokens": float(ended.sum()),
            "completions/mean_length": float(batch.mask.sum(1).mean()),
            "completions/clipped_ratio": float((~ended).float().mean()),
            "episode": float(self.state.episode),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        metrics.update({k: float(sum(v) / len(v)) for k, v in stats.items() if v})
        for name, values in judged.items():
            metrics[f"rewards/{name}/mean"] = sum(values) / len(values)
        if self.procs.world > 1:  # over the global batch: means of the equal shares' means
            keys = sorted(metrics)
            means = self.procs.mean(torch.tensor([metrics[k] for k in keys], dtype=torch.float64))
            metrics = dict(zip(keys, means.tolist(), strict=True))
            metrics["val/num_eos_tokens"] *= self.procs.world  # a count, not a mean
        return metrics

    # --- the run --------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Iterate to --max-steps (or --max-time-s): log every iteration to RUN_DIR/ppo_log.jsonl,
        print every --logging-steps, checkpoint every --save-steps and at the end."""
        from tqdm.auto import tqdm

        config, main = self.config, self.procs.is_main
        roller = (
            VLLMRollouts(config, self.start, self.tokenizer)
            if config.backend == "vllm"
            else HFRollouts(config, self.tokenizer, rank=self.procs.rank)
        )
        last: dict[str, float] = {}
        start = time.monotonic()
        self.deadline = None if config.max_time_s is None else start + config.max_time_s
        try:
            with (
                (self.run_dir / LOG_FILE).open("a") if main else contextlib.nullcontext() as log,
                tqdm(
                    total=config.max_steps,
                    initial=self.state.step,
                    desc=f"ppo {config.name}",
                    disable=not main,
                ) as bar,
            ):
                while self.state.step < config.max_steps:
                    last = self._timed_iteration(roller)
                    if log is not None:
                        log.write(json.dumps(last, sort_keys=True) + "\n")
                        log.flush()
                    bar.update(1)
                    budget = config.max_time_s
                    # rank 0's clock decides for all, so no process stops alone
                    out_of_time = self.procs.broadcast_flag(
                        budget is not None and time.monotonic() - start >= budget
                    )
                    last_step = out_of_time or self.state.step == config.max_steps
                    if main and (last_step or self.state.step % config.logging_steps == 0):
                        bar.write(_format_metrics(last))
                    if last_step or self.state.step % config.save_steps == 0:
                        self._save_checkpoint()
                    if out_of_time and self.state.step < config.max_steps:
                        if main:
                            bar.write(f"[budget] {budget:g} s reached at step {self.state.step}: stopping")
                        break
        finally:
            roller.close()
        return last

    def _timed_iteration(self, roller: Any) -> dict[str, float]:
        """One iteration at this step's learning rate; its metrics with timings and the step."""
        self._set_lr()
        refreshed: dict[str, float] = {}
        step, every = self.state.step, self.config.rm_refresh_every
        t0 = time.perf_counter()
        if every and step > 0 and step % every == 0:
            left = None if self.deadline is None else self.deadline - time.monotonic()
            # rank 0's clock decides for all, as for the budget itself
            if self.procs.broadcast_flag(refresh_fits(left, self.last_refresh_s)):
                refreshed = self.refresh_reward_model(step)
                self.last_refresh_s = refreshed["time/rm_refresh_s"] = time.perf_counter() - t0
            else:
                refreshed = {"rm_refresh/skipped": 1.0}
        t0 = time.perf_counter()
        rollouts = self.rollout(roller, step)
        t1 = time.perf_counter()
        metrics = self.step(rollouts)
        metrics.update(
            {
                **refreshed,
                "time/rollout_s": t1 - t0,
                "time/update_s": time.perf_counter() - t1,
                "step": float(self.state.step),
            }
        )
        return metrics

    def _set_lr(self) -> None:
        """Linear warm-up, then linear decay to 0 over the run (TRL's anneal_lr)."""
        config, step = self.config, self.state.step
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        frac = 1.0 - step / config.max_steps
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * warm * frac

    # --- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """RUN_DIR/checkpoint-STEP, written under a temporary name and renamed whole (by rank 0,
        once every process's weights are checked to be rank 0's)."""
        import torch

        drift = self.procs.max_divergence(self._trainable())
        if drift > 1e-6:
            raise RuntimeError(
                f"PPO processes out of step at iteration {self.state.step}: weights differ by {drift:g}"
            )
        if not self.procs.is_main:
            self.procs.barrier()
            return
        final = self.run_dir / f"checkpoint-{self.state.step}"
        staging = self.run_dir / f".tmp-checkpoint-{self.state.step}"
        shutil.rmtree(staging, ignore_errors=True)
        self.policy.save_pretrained(str(staging / "policy"))
        torch.save(self.value_head.state_dict(), staging / "value_head.pt")
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(torch.get_rng_state(), staging / "rng_state.pt")
        (staging / "ppo_state.json").write_text(json.dumps(self.state.__dict__, indent=2))
        if self.refresher is not None:  # the refreshed reward model and its comparisons
            self.refresher.save(staging / "reward_model", self.scorer.function("rm").loaded())
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        kept = sorted(self.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        self.procs.barrier()

    def _load_checkpoint(self) -> None:
        import torch
        from safetensors.torch import load_file

        done = sorted(self.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not done:
            raise ConfigError(f"resume=True but {self.run_dir} has no checkpoint-*")
        ckpt = done[-1]
        if self.config.full:
            missing, unexpected = self.policy.load_state_dict(
                load_file(ckpt / "policy" / "model.safetensors"), strict=False
            )
            if unexpected or [k for k in missing if "lm_head" not in k]:
                raise ConfigError(f"{ckpt}: policy weights do not match the model")
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, load_file(ckpt / "policy" / "adapter_model.safetensors"))
        self.value_head.load_state_dict(torch.load(ckpt / "value_head.pt"))
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt"))
        torch.set_rng_state(torch.load(ckpt / "rng_state.pt"))
        self.state = PPOState(**json.loads((ckpt / "ppo_state.json").read_text()))
        if self.refresher is not None and (ckpt / "reward_model").is_dir():
            rm = self.scorer.function("rm")
            rm.path = ckpt / "reward_model"
            rm.loaded()  # now, before a later checkpoint rotates this one away
            self.refresher.load(ckpt / "reward_model")
        print(f"[{self.config.name}] resuming from {ckpt} (iteration {self.state.step})", flush=True)

    # --- the registry entry ---------------------------------------------------------------

    def save_entry(self, metrics: dict[str, float]) -> Entry | None:
        """The policy as a registry entry of kind ppo (an adapter vLLM could not serve is refused)."""
        final = self.run_dir / "final"
        if self.procs.is_main:  # the others hold the same weights
            shutil.rmtree(final, ignore_errors=True)
            self.policy.save_pretrained(str(final))
        if self.refresher is not None and self.refresher.refreshes:
            self._save_reward_entry()
        return common.save_entry(
            self.config,
            self.start,
            kind="ppo",
            final_dir=final,
            data_digest=self.digest,
            metrics=metrics,
            tokenizer=self.tokenizer,
            extra={
                "rollout_backend": self.config.backend,
                "reward": self.config.reward,
                "reward_model": self.config.reward_model,
                "processes": self.procs.world,
            },
        )

    def _save_reward_entry(self) -> Entry:
        """The refreshed reward model as entry NAME-rm (training/rm_refresh.py)."""
        assert self.config.reward_model is not None and self.refresher is not None
        return save_refreshed_entry(
            self.registry,
            self.config,
            self.refresher,
            self.scorer.function("rm").loaded(),
            data_hash=self.digest,
            metrics=self.last_refresh,
        )


def _check_processes(config: PPOConfig, world: int) -> None:
    """Under N processes every global batch must split evenly, and each needs no engine."""
    if world == 1:
        return
    if config.rm_refresh_every:
        raise ConfigError(f"rm_refresh_every under {world} processes is not supported: run it in one")
    if config.backend == "vllm":
        raise ConfigError(
            f"rollout_backend='vllm' under {world} processes would start an engine in each; "
            "use --rollout-backend hf"
        )
    for name in ("batch_size", "mini_batch_size"):
        value = getattr(config, name)
        if value % world:
            raise ConfigError(f"{name}={value} does not split evenly across {world} processes")
    local = config.mini_batch_size // world
    if local % config.gradient_accumulation_steps:
        raise ConfigError(
            f"mini_batch_size={config.mini_batch_size} over {world} processes gives {local} per "
            f"process, not divisible by gradient_accumulation_steps={config.gradient_accumulation_steps}"
        )


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> list[int]:
    from training.generation import prompt_ids

    ids = prompt_ids(tokenizer, messages)
    if len(ids) > max_length:
        raise ConfigError(f"a prompt has {len(ids)} tokens, more than max_length={max_length}")
    return ids


def _prompts_hash(prompts: Sequence[Prompt]) -> str:
    from training.data import data_hash

    return data_hash({"id": p.id, "messages": p.messages} for p in prompts)


def _format_metrics(metrics: dict[str, float]) -> str:
    keys = (
        "step",
        "objective/scores",
        "objective/kl",
        "objective/rlhf_reward",
        "rewards/gold/mean",
        "rewards/rm/mean",
        "policy/clipfrac_avg",
        "val/vpred",
        "completions/mean_length",
    )
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics and math.isfinite(metrics[k]))


def run(config: PPOConfig) -> Entry | None:
    """Train with PPO and write the entry; returns it."""
    trainer = PPOTrainer(config, config.open_registry())
    metrics = trainer.train()
    return trainer.save_entry(metrics)

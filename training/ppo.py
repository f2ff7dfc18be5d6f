"""RLHF with PPO: policy, value head, frozen reward, reference policy, per-token KL penalty.

    bonserve train ppo --name arith-ppo --task arithmetic --reward gold          # gold verifier
    bonserve train ppo --name arith-ppo-rm --task arithmetic --reward rm --reward-model arith-rm
    bonserve train ppo --name chat-ppo --data prompts.jsonl --reward rm --reward-model my-rm

TRL removed its PPOTrainer (deleted by 1.16), so the loop lives here; it follows TRL's former
PPOTrainer and the checklist of "The N Implementation Details of RLHF with PPO" (Huang et al.
2024). One iteration (`--max-steps` counts them):

1. rollouts: `--batch-size` prompts, one sampled response each at `--temperature`, by vLLM
   with the current LoRA adapter loaded into the engine (a new adapter id per iteration), or
   by HF `generate` on the training module. `--rollout-backend auto` takes vLLM for LoRA on a
   GPU and HF otherwise: on CPU vLLM's LoRA decoding measured 0.55x HF generate, and --full
   would need the engine's weights reloaded every iteration. Each response is cut after its
   first end-of-turn token;
2. log-probabilities recomputed with transformers under the policy and the reference (never
   vLLM's: the ratio must start at exactly 1), at the sampling temperature, and values from
   the value head;
3. score: the task's gold verifier or the reward model on the decoded response; responses
   that never emit the end token get `--missing-eos-penalty` subtracted; optional
   normalisation with gain/bias fixed on the first batch (the starting policy's samples);
4. per-token reward -kl_coef * KL_t with the score added on the last token; GAE advantages,
   whitened; `--num-ppo-epochs` passes over the batch in shuffled `--mini-batch-size`
   mini-batches with the clipped policy loss + vf_coef * clipped value loss;
5. the KL coefficient stays fixed, or adapts toward `--target-kl` (Ziegler et al. 2019).

The four roles: the policy is a LoRA adapter on --base (or full weights); the reference is
--base itself — the same module with the adapter disabled, no second copy — except with
--full or a LoRA --base, which keep a frozen copy; the value head is a linear layer on the
policy's last hidden state (one backbone pass gives logits and values; the cheap choice on
CPU — the value loss also trains the shared adapter, weighted by --vf-coef); the reward is
frozen and never trained here.

Metrics keep TRL's names (`objective/kl`, `objective/scores`, `objective/rlhf_reward`,
`policy/approxkl_avg`, `policy/clipfrac_avg`, `val/vpred`, `val/clipfrac_avg`, ...), are
printed and appended to RUN_DIR/ppo_log.jsonl. When a gold verifier exists it is always
logged (`rewards/gold/mean`) beside the learned reward (`rewards/rm/mean`), so reward
hacking shows as the two curves parting. Checkpoints (adapter, value head, optimizer, KL
coefficient, score normalisation) are written every --save-steps; --resume continues.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.flags import add_flags
from core.registry import Entry, Registry
from training.common import (
    ConfigError,
    Start,
    TrainConfig,
    copy_adapter,
    copy_full,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    prepare_run_dir,
    resolve_start,
    run_main,
    write_entry,
)
from training.prompts import Prompt, load_prompts

REWARDS = ("gold", "rm")
BACKENDS = ("auto", "vllm", "hf")
LOG_FILE = "ppo_log.jsonl"


@dataclass(kw_only=True)
class PPOConfig(TrainConfig):
    """`bonserve train ppo` options (the shared ones are documented on TrainConfig)."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "Prompts file (JSONL/Parquet rows with `prompt`: a string or messages) instead of "
            "--task; needs --reward rm."
        },
    )
    task: str | None = field(
        default=None,
        metadata={"help": "Built-in task giving prompts and the gold verifier (arithmetic unless --data)."},
    )
    split: str = field(default="train", metadata={"help": "Task split the prompts come from."})
    n_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts only."})
    reward: str = field(
        default="gold",
        metadata={"help": "What PPO maximises: 'gold' (the task's verifier) or 'rm' (--reward-model)."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "Registry reward model (kind rm); scored each step, logged beside gold if a task has one."
        },
    )
    rollout_backend: str = field(
        default="auto",
        metadata={
            "help": "'vllm' (LoRA only), 'hf' (transformers generate), 'auto' (vllm: LoRA on GPU; else hf)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Prompts (one rollout each) per PPO iteration."})
    mini_batch_size: int = field(
        default=8,
        metadata={"help": "Rollouts per optimizer step; --gradient-accumulation-steps splits it further."},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response."})
    kl_coef: float = field(
        default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."}
    )
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "KL estimator in the reward: k1 (log ratio, as in the papers) or k3 (non-negative)."
        },
    )
    target_kl: float | None = field(
        default=None,
        metadata={
            "help": "Adaptive KL: steer the per-sequence KL toward this value (default: fixed kl_coef)."
        },
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL horizon, in episodes."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards (mean kept)."})
    normalize_scores: bool = field(
        default=False,
        metadata={"help": "Fix a gain and bias on the first batch's scores so they have mean 0, std 1."},
    )
    missing_eos_penalty: float = field(
        default=1.0,
        metadata={"help": "Subtracted from the score of a response cut off before its end token (0 = off)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    forward_batch_size: int = field(default=16, metadata={"help": "Rows per no-grad forward pass."})
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout; 0 so that log-probs at rollout and update time agree (PPO detail)."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Print metrics every N iterations."})
    save_steps: int = field(default=10, metadata={"help": "Write a resumable checkpoint every N iterations."})
    enforce_eager: bool = field(default=False, metadata={"help": "Skip torch.compile in the rollout engine."})
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache of the rollout engine."})

    def __post_init__(self) -> None:
        if self.data is None and self.task is None:
            self.task = "arithmetic"
        if self.data is not None and self.task is not None:
            raise ConfigError("give prompts by --task or --data, not both")
        super().__post_init__()
        if self.reward not in REWARDS:
            raise ConfigError(f"reward={self.reward!r}: use one of {REWARDS}")
        if self.reward == "rm" and not self.reward_model:
            raise ConfigError("reward='rm' needs --reward-model NAME (a registry entry of kind rm)")
        if self.reward == "gold" and not self.task:
            raise ConfigError(
                "reward='gold' needs a --task with a gold verifier; with --data use --reward rm"
            )
        if self.rollout_backend not in BACKENDS:
            raise ConfigError(f"rollout_backend={self.rollout_backend!r}: use one of {BACKENDS}")
        if self.rollout_backend == "vllm" and self.full:
            raise ConfigError(
                "rollout_backend='vllm' with --full: vLLM would have to reload the full "
                "weights every iteration; use --rollout-backend hf"
            )
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"kl_estimator={self.kl_estimator!r}: use k1 or k3")
        for key in (
            "mini_batch_size",
            "num_ppo_epochs",
            "max_new_tokens",
            "forward_batch_size",
            "kl_horizon",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be an integer >= 1")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"batch_size={self.batch_size} is not a multiple of mini_batch_size={self.mini_batch_size}"
            )
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(
                f"mini_batch_size={self.mini_batch_size} is not a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}"
            )
        checks = {
            "temperature": self.temperature > 0,
            "kl_coef": self.kl_coef >= 0,
            "gamma": 0 < self.gamma <= 1,
            "lam": 0 <= self.lam <= 1,
            "cliprange": self.cliprange > 0,
            "cliprange_value": self.cliprange_value > 0,
            "vf_coef": self.vf_coef >= 0,
            "missing_eos_penalty": self.missing_eos_penalty >= 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "kv_cache_gib": self.kv_cache_gib > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is out of range (see --help)")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"target_kl={self.target_kl!r}: must be > 0")
        if self.bf16:
            raise ConfigError("bf16=True: the PPO loop runs in float32 (log-prob ratios need the precision)")

    @property
    def backend(self) -> str:
        """'auto' picks vLLM only where it is the faster one: for LoRA on a GPU. On CPU, vLLM's
        LoRA kernels decode at 0.55x HF generate (docs/benchmarks/rollout_throughput.md)."""
        if self.rollout_backend != "auto":
            return self.rollout_backend
        import torch

        return "vllm" if torch.cuda.is_available() and not self.full else "hf"


# --------------------------------------------------------------------------- rewards


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


# --------------------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    """One batch of prompts and sampled responses, as token ids (responses end at the first
    end token, inclusive; `ended` says whether that token was reached)."""

    prompts: list[Prompt]
    query_ids: list[list[int]]
    response_ids: list[list[int]]
    ended: list[bool]


class VLLMRollouts:
    """Samples with a `vllm.LLM` over the full base weights; each iteration saves the policy's
    adapter and sends it as a new LoRARequest, so the engine always runs the current policy."""

    def __init__(self, config: PPOConfig, start: Start, tokenizer: Any):
        from training.generation import llm_kwargs, open_llm

        self._stack = open_llm(
            llm_kwargs(
                start.root.path,
                lora_rank=config.lora_r,
                enforce_eager=config.enforce_eager,
                kv_cache_gib=config.kv_cache_gib,
                seed=config.seed,
            )
        )
        self.llm = self._stack.__enter__()
        self.config, self.tokenizer = config, tokenizer
        self.adapter_dir = config.run_dir() / "rollout-adapter"

    def generate(self, policy: Any, query_ids: list[list[int]], step: int) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        shutil.rmtree(self.adapter_dir, ignore_errors=True)
        policy.save_pretrained(str(self.adapter_dir))
        lora = LoRARequest(f"ppo-step-{step}", step + 1, str(self.adapter_dir))
        params = [
            SamplingParams(
                n=1,
                temperature=self.config.temperature,
                top_p=1.0,
                top_k=-1,
                max_tokens=self.config.max_new_tokens,
                seed=self.config.seed * 1_000_003 + step * 10_007 + i,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for i in range(len(query_ids))
        ]
        outs = self.llm.generate(
            [{"prompt_token_ids": q} for q in query_ids], params, lora_request=lora, use_tqdm=False
        )
        if step > 0:  # the previous adapter is never used again
            self.llm.llm_engine.remove_lora(step)
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        self._stack.__exit__(None, None, None)


class HFRollouts:
    """Samples with transformers `generate` on the policy module itself (any format)."""

    def __init__(self, config: PPOConfig, tokenizer: Any):
        self.config, self.tokenizer = config, tokenizer

    def generate(self, policy: Any, query_ids: list[list[int]], step: int) -> list[list[int]]:
        import torch

        torch.manual_seed(self.config.seed * 1_000_003 + step)
        out: list[list[int]] = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(query_ids), self.config.forward_batch_size):
            chunk = query_ids[i : i + self.config.forward_batch_size]
            ids, mask = left_pad(chunk, pad)
            with torch.no_grad():
                gen = policy.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=self.config.temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=self.config.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            out.extend(row.tolist() for row in gen[:, ids.shape[1] :])
        return out

    def close(self) -> None:
        """Nothing to release: generation ran on the training module."""


# --------------------------------------------------------------------------- tensors


def left_pad(rows: Sequence[Sequence[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad: int):
    import torch

    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1.0
    return ids, mask


@dataclass
class Batch:
    """Rollouts as aligned tensors: left-padded queries, right-padded responses."""

    query: Any  # [B, Q]
    query_mask: Any
    response: Any  # [B, R]
    mask: Any  # [B, R] float, 1 on response tokens

    def select(self, idx: Any) -> Batch:
        return Batch(self.query[idx], self.query_mask[idx], self.response[idx], self.mask[idx])


def forward(
    model: Any,
    value_head: Any,
    batch: Batch,
    temperature: float,
    *,
    with_values: bool,
    with_entropy: bool = False,
) -> dict[str, Any]:
    """Response-token log-probs (at the sampling temperature), values and entropy.

    Position ids follow the attention mask, as the left padding requires; only the logits
    that predict response tokens are computed.
    """
    import torch

    from training.ppo_math import entropy_from_logits, logprobs_from_logits

    ids = torch.cat([batch.query, batch.response], dim=1)
    attn = torch.cat([batch.query_mask, batch.mask.long()], dim=1)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    width = batch.response.shape[1]
    out = model(
        input_ids=ids,
        attention_mask=attn,
        position_ids=positions,
        logits_to_keep=width + 1,
        output_hidden_states=with_values,
    )
    logits = out.logits[:, :-1, :] / temperature
    result = {"logprobs": logprobs_from_logits(logits, batch.response)}
    if with_values:
        hidden = out.hidden_states[-1][:, -width - 1 : -1, :]
        result["values"] = value_head(hidden).squeeze(-1)
    if with_entropy:
        result["entropy"] = entropy_from_logits(logits)
    return result


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
        self.scorer = Scorer(config, registry)
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(self.start)
        self.stop_ids = {self.tokenizer.eos_token_id}
        self.policy, self.ref = self._build_policy()
        hidden = self.policy.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = [p for p in self.policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
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

    # --- models ---------------------------------------------------------------------------

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

    # --- one iteration --------------------------------------------------------------------

    def batch_prompts(self, step: int) -> list[Prompt]:
        """Deterministic in (seed, step): a fresh shuffle of all prompts each epoch over them."""
        n, size = len(self.prompts), self.config.batch_size
        out = []
        for i in range(step * size, (step + 1) * size):
            order = list(range(n))
            random.Random(self.config.seed * 7919 + i // n).shuffle(order)
            out.append(self.prompts[order[i % n]])
        return out

    def rollout(self, roller: Any, step: int) -> Rollouts:
        from training.ppo_math import cut_at_stop

        prompts = self.batch_prompts(step)
        queries = [self.query_ids[p.id] for p in prompts]
        raw = roller.generate(self.policy, queries, step)
        cut = [cut_at_stop(r, self.stop_ids) for r in raw]
        return Rollouts(prompts, queries, [c[0] for c in cut], [c[1] for c in cut])

    def step(self, rollouts: Rollouts) -> dict[str, float]:
        import torch

        from training.ppo_math import (
            gae,
            kl_estimate,
            masked_mean,
            masked_whiten,
            policy_loss,
            token_rewards,
            value_loss,
        )

        config = self.config
        pad = self.tokenizer.pad_token_id
        query, query_mask = left_pad(rollouts.query_ids, pad)
        response, mask = right_pad(rollouts.response_ids, pad)
        batch = Batch(query, query_mask, response, mask)
        size = len(rollouts.prompts)

        with torch.no_grad():
            parts = [
                forward(
                    self.policy,
                    self.value_head,
                    batch.select(slice(i, i + config.forward_batch_size)),
                    config.temperature,
                    with_values=True,
                )
                for i in range(0, size, config.forward_batch_size)
            ]
            old_logprobs = torch.cat([p["logprobs"] for p in parts]) * mask
            old_values = torch.cat([p["values"] for p in parts]) * mask
            ref_logprobs = (
                torch.cat(
                    [
                        self._ref_logprobs(batch.select(slice(i, i + config.forward_batch_size)))
                        for i in range(0, size, config.forward_batch_size)
                    ]
                )
                * mask
            )

        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in rollouts.response_ids]
        judged = self.scorer(rollouts.prompts, texts)
        scores = torch.tensor(judged[config.reward], dtype=torch.float32)
        ended = torch.tensor(rollouts.ended)
        if config.normalize_scores:
            if self.state.score_bias is None:
                self.state.score_bias = float(scores.mean())
                self.state.score_gain = 1.0 / max(float(scores.std()), 1e-6)
            scores = (scores - self.state.score_bias) * self.state.score_gain
        scores = scores - config.missing_eos_penalty * (~ended).float()

        kl_coef = self.kl_ctl.value
        rewards, non_score = token_rewards(
            scores, old_logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator
        )
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask) * mask

        stats: dict[str, list[float]] = {
            k: []
            for k in (
                "policy/approxkl_avg",
                "policy/clipfrac_avg",
                "loss/policy_avg",
                "loss/value_avg",
                "val/clipfrac_avg",
                "policy/entropy_avg",
                "val/ratio",
                "val/vpred",
            )
        }
        micro = config.mini_batch_size // config.gradient_accumulation_steps
        generator = torch.Generator().manual_seed(config.seed * 31 + self.state.step)
        for _ in range(config.num_ppo_epochs):
            order = torch.randperm(size, generator=generator)
            for m in range(0, size, config.mini_batch_size):
                for u in range(m, m + config.mini_batch_size, micro):
                    idx = order[u : u + micro]
                    sub = batch.select(idx)
                    new = forward(
                        self.policy,
                        self.value_head,
                        sub,
                        config.temperature,
                        with_values=True,
                        with_entropy=True,
                    )
                    new_logprobs = new["logprobs"] * sub.mask
                    pl = policy_loss(
                        new_logprobs, old_logprobs[idx], advantages[idx], sub.mask, config.cliprange
                    )
                    vl = value_loss(
                        new["values"], old_values[idx], returns[idx], sub.mask, config.cliprange_value
                    )
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
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], config.max_grad_norm
                )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():
            kl = (kl_estimate(old_logprobs, ref_logprobs, "k1") * mask).sum(1)
            non_score_sum = non_score.sum(1)
        self.kl_ctl.update(float(kl.mean()), size)
        self.state.kl_coef = self.kl_ctl.value
        self.state.step += 1
        self.state.episode += size
        lengths = mask.sum(1)
        metrics = {
            "objective/kl": float(kl.mean()),
            "objective/entropy": float((-old_logprobs).sum(1).mean()),
            "objective/non_score_reward": float(non_score_sum.mean()),
            "objective/scores": float(scores.mean()),
            "objective/rlhf_reward": float((scores + non_score_sum).mean()),
            "objective/kl_coef": kl_coef,
            "val/ratio_var": float(torch.tensor(stats["val/ratio"]).var())
            if len(stats["val/ratio"]) > 1
            else 0.0,
            "val/num_eos_tokens": float(ended.sum()),
            "completions/mean_length": float(lengths.mean()),
            "completions/clipped_ratio": float((~ended).float().mean()),
            "episode": float(self.state.episode),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        metrics.update({k: float(sum(v) / len(v)) for k, v in stats.items() if v})
        for name, values in judged.items():
            metrics[f"rewards/{name}/mean"] = sum(values) / len(values)
        return metrics

    def _set_lr(self) -> None:
        """Linear warm-up, then linear decay to 0 over the run (TRL's anneal_lr)."""
        config, step = self.config, self.state.step
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        frac = 1.0 - step / config.max_steps
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * warm * frac

    # --- the run --------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        config = self.config
        roller = (
            VLLMRollouts(config, self.start, self.tokenizer)
            if config.backend == "vllm"
            else HFRollouts(config, self.tokenizer)
        )
        last: dict[str, float] = {}
        start = time.monotonic()
        try:
            with (
                (self.run_dir / LOG_FILE).open("a") as log,
                tqdm(total=config.max_steps, initial=self.state.step, desc=f"ppo {config.name}") as bar,
            ):
                while self.state.step < config.max_steps:
                    self._set_lr()
                    t0 = time.perf_counter()
                    rollouts = self.rollout(roller, self.state.step)
                    t1 = time.perf_counter()
                    last = self.step(rollouts)
                    last.update(
                        {
                            "time/rollout_s": t1 - t0,
                            "time/update_s": time.perf_counter() - t1,
                            "step": float(self.state.step),
                        }
                    )
                    log.write(json.dumps(last, sort_keys=True) + "\n")
                    log.flush()
                    bar.update(1)
                    budget = config.max_time_s
                    out_of_time = budget is not None and time.monotonic() - start >= budget
                    last_step = out_of_time or self.state.step == config.max_steps
                    if last_step or self.state.step % config.logging_steps == 0:
                        bar.write(_format_metrics(last))
                    if last_step or self.state.step % config.save_steps == 0:
                        self._save_checkpoint()
                    if out_of_time and self.state.step < config.max_steps:
                        bar.write(f"[budget] {budget:g} s reached at step {self.state.step}: stopping")
                        break
        finally:
            roller.close()
        return last

    # --- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """RUN_DIR/checkpoint-STEP, written under a temporary name and renamed whole."""
        import torch

        final = self.run_dir / f"checkpoint-{self.state.step}"
        staging = self.run_dir / f".tmp-checkpoint-{self.state.step}"
        shutil.rmtree(staging, ignore_errors=True)
        self.policy.save_pretrained(str(staging / "policy"))
        torch.save(self.value_head.state_dict(), staging / "value_head.pt")
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(torch.get_rng_state(), staging / "rng_state.pt")
        (staging / "ppo_state.json").write_text(json.dumps(self.state.__dict__, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        kept = sorted(self.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

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
        print(f"[{self.config.name}] resuming from {ckpt} (iteration {self.state.step})", flush=True)

    # --- the registry entry ---------------------------------------------------------------

    def save_entry(self, metrics: dict[str, float]) -> Entry | None:
        final = self.run_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        self.policy.save_pretrained(str(final))
        fmt = "full" if self.config.full else "lora"
        return write_entry(  # refuses an adapter vLLM could not serve
            self.config,
            self.start,
            kind="ppo",
            fmt=fmt,
            data_digest=self.digest,
            metrics=metrics,
            tokenizer=self.tokenizer,
            extra={
                "rollout_backend": self.config.backend,
                "reward": self.config.reward,
                "reward_model": self.config.reward_model,
            },
            fill=lambda staging: (copy_full if fmt == "full" else copy_adapter)(final, staging),
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
    trainer = PPOTrainer(config, config.open_registry())
    metrics = trainer.train()
    return trainer.save_entry(metrics)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bonserve train ppo", description=__doc__.splitlines()[0])
    return add_flags(parser, PPOConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(PPOConfig, run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())

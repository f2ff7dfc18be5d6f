"""PPO's rollouts (step 1 of training/ppo.py): sample one response per prompt with the
current policy, and pack a batch of them into aligned tensors.

Two backends, one interface (`generate(policy, query_ids, step) -> response ids`, `close()`):
- `VLLMRollouts`: a `vllm.LLM` over the full base weights; every iteration saves the policy's
  adapter and sends it as a new LoRARequest (LoRA only);
- `HFRollouts`: transformers `generate` on the training module itself (any format).
`PPOConfig.backend` picks one (`--rollout-backend`; auto = vLLM for LoRA on a GPU, HF
otherwise: on CPU vLLM's LoRA decoding measured 0.55x HF generate).

Tensors: queries are left-padded and responses right-padded (`left_pad`, `right_pad`), so
one concatenation per row puts every response right after its prompt; `Batch.pack` does it
for a whole `Rollouts`, `Batch.select` takes mini-batches, and `forward` reads a packed batch
back through a model (response log-probs, values, entropy), relying on that layout.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.common import Start
from training.ppo_config import PPOConfig
from training.prompts import Prompt


@dataclass
class Rollouts:
    """One batch of prompts and sampled responses, as token ids (responses end at the first
    end token, inclusive; `ended` says whether that token was reached)."""

    prompts: list[Prompt]
    query_ids: list[list[int]]
    response_ids: list[list[int]]
    ended: list[bool]


# --------------------------------------------------------------------------- the two backends


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

    def __init__(self, config: PPOConfig, tokenizer: Any, rank: int = 0):
        self.config, self.tokenizer = config, tokenizer
        self.rank = rank  # under N processes each samples its share with its own seed

    def generate(self, policy: Any, query_ids: list[list[int]], step: int) -> list[list[int]]:
        import torch

        torch.manual_seed(self.config.seed * 1_000_003 + step + self.rank * 7919)
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


# --------------------------------------------------------------------------- tensors: padding and packing


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

    @classmethod
    def pack(cls, rollouts: Rollouts, pad: int) -> Batch:
        query, query_mask = left_pad(rollouts.query_ids, pad)
        response, mask = right_pad(rollouts.response_ids, pad)
        return cls(query, query_mask, response, mask)

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

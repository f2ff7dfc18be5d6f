"""The server's engine factories: `core.engine_args` filled from Settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.engine_args import policy_engine_kwargs, reward_engine_env, reward_engine_kwargs
from server.config import Settings
from server.engines import build_async_llm


@dataclass
class EngineBuilder:
    """Factories for the ManagedEngine of a policy or reward checkpoint."""

    settings: Settings

    def policy(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        kwargs = policy_engine_kwargs(self.settings.engine_options(), path, name)
        return lambda: build_async_llm(kwargs, metrics_name=metrics_name or f"policy:{name}")

    def reward(self, path: Path, name: str, metrics_name: str | None = None) -> Callable[[], Any]:
        kwargs = reward_engine_kwargs(self.settings.engine_options(), path, name)
        env = reward_engine_env(self.settings.reward_omp_threads)
        return lambda: build_async_llm(kwargs, env, metrics_name=metrics_name or f"reward:{name}")

"""Load, unload and promote registry checkpoints in a running server (the admin API's logic).

- A LoRA entry is added to the policy engine (`AsyncLLM.add_lora`): milliseconds, no new
  engine. Its manifest must name the policy's base, a rank the engine accepts, and no
  `modules_to_save` (vLLM cannot serve those).
- A full entry gets its own engine, started and warmed before any alias points at it; after
  a promotion the previous target drains (requests in flight finish) and its engine is
  freed when nothing else uses it.
- The reward model swaps the same way: new engine up first, then the scorer switches.

Every check runs before anything changes, so a bad entry leaves the server as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import psutil

from core.lora import AdapterError, check_servable_adapter
from core.registry import Entry, Registry, RegistryError, RegistryNotFound
from server import metrics
from server.config import Settings
from server.engine_config import EngineBuilder
from server.engines import EngineState, ManagedEngine
from server.errors import APIError
from server.models import ModelRouter, ServedModel
from server.reward import RewardScorer

logger = logging.getLogger("bonserve.models")


@dataclass
class SwapResult:
    alias: str
    model: str
    previous: str | None
    unloaded: str | None
    seconds: float


def _registry_error(exc: RegistryError) -> APIError:
    status = 404 if isinstance(exc, RegistryNotFound) else 422
    return APIError(
        status, str(exc), param="model", code="model_not_found" if status == 404 else "invalid_checkpoint"
    )


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        router: ModelRouter,
        engines: dict[str, ManagedEngine],
        builder: EngineBuilder,
        policy_base: str,
        reward: RewardScorer | None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.engines = engines  # name -> engine, for /ready and /metrics
        self.builder = builder
        self.policy_base = policy_base  # base model name LoRA entries must be trained on
        self.reward = reward
        self.registry = Registry(settings.registry)
        self._lock = asyncio.Lock()  # one load/unload/promote at a time
        self._next_lora_id = 1

    # ------------------------------------------------------------------ checks

    def _entry(self, name: str) -> Entry:
        try:
            return self.registry.load(name)
        except RegistryError as exc:
            raise _registry_error(exc) from exc

    def _check_lora(self, entry: Entry) -> None:
        try:
            check_servable_adapter(entry.path, self.settings.max_lora_rank)
        except AdapterError as exc:
            raise APIError(422, f"LoRA checkpoint '{entry.name}': {exc}", code=exc.code) from exc
        base = entry.manifest.base_model
        if base != self.policy_base:
            raise APIError(
                422,
                f"'{entry.name}' was trained on base '{base}', but this server's "
                f"policy is '{self.policy_base}'",
                code="wrong_base",
            )
        if not self.settings.max_loras:
            raise APIError(
                409, "LoRA serving is off: start the server with --max-loras N", code="lora_disabled"
            )

    def _check_memory(self, entry: Entry, kv_cache_gib: float | None = None) -> None:
        weights = sum(
            info["size"]
            for rel, info in entry.manifest.files.items()
            if rel.endswith((".safetensors", ".bin"))
        )
        kv = self.settings.kv_cache_gib if kv_cache_gib is None else kv_cache_gib
        need = weights * self.settings.swap_memory_headroom + kv * (1 << 30)
        free = available_memory()
        if need > free:
            raise APIError(
                409,
                f"not enough free memory to load '{entry.name}': needs about "
                f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available",
                code="insufficient_memory",
            )

    # ------------------------------------------------------------------ operations

    async def load(self, name: str) -> ServedModel:
        async with self._lock:
            return await self._load(name)

    async def _load(self, name: str) -> ServedModel:
        if self.router.is_known(name):
            return self.router.resolve(name)
        entry = self._entry(name)
        kind, fmt = entry.manifest.kind, entry.manifest.format
        if kind == "rm":
            raise APIError(
                422, f"'{name}' is a reward model: use POST /admin/reward/promote", code="wrong_kind"
            )
        if fmt == "lora":
            self._check_lora(entry)
            return await self._load_lora(entry)
        self._check_memory(entry)
        engine = await self._start_engine(f"policy:{name}", self.builder.policy(entry.path, name))
        served = ServedModel(name=name, engine=engine, kind=kind, parent=entry.manifest.parent)
        self.router.add(served)
        return served

    async def _load_lora(self, entry: Entry) -> ServedModel:
        from vllm.lora.request import LoRARequest

        base = (
            self.router.resolve(self.policy_base)
            if self.router.is_known(self.policy_base)
            else self._policy_model()
        )
        engine = base.engine.require()
        request = LoRARequest(lora_name=entry.name, lora_int_id=self._next_lora_id, lora_path=str(entry.path))
        self._next_lora_id += 1
        try:
            await engine.add_lora(request)
        except Exception as exc:  # vLLM validates the adapter's tensors here
            raise APIError(
                422, f"vLLM refused adapter '{entry.name}': {exc}", code="invalid_checkpoint"
            ) from exc
        served = ServedModel(
            name=entry.name,
            engine=base.engine,
            kind=entry.manifest.kind,
            parent=entry.manifest.parent,
            format="lora",
            lora=request,
        )
        self.router.add(served)
        return served

    def _policy_model(self) -> ServedModel:
        policy = self.engines["policy"]
        return next(m for m in self.router.all() if m.engine is policy and m.lora is None)

    async def _start_engine(self, name: str, factory: Any) -> ManagedEngine:
        engine = ManagedEngine(name, factory, restart_backoff_s=self.settings.engine_restart_backoff_s)
        await engine.start()
        if engine.state != EngineState.RUNNING:
            await engine.stop()
            raise APIError(
                422, f"engine for '{name}' failed to start: {engine.last_error}", code="invalid_checkpoint"
            )
        self.engines[name] = engine
        return engine

    async def unload(self, name: str) -> None:
        async with self._lock:
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        served = self.router.resolve(name)
        if served.name != name:
            raise APIError(400, f"'{name}' is an alias; unload its target '{served.name}'", param="model")
        if served.engine is self.engines["policy"] and served.lora is None:
            raise APIError(
                409, f"'{name}' is the server's startup policy and cannot be unloaded", code="model_in_use"
            )
        self.router.remove(name)  # new requests can no longer resolve it
        await self._drained(served)
        if served.lora is not None:
            engine = served.engine.engine
            if engine is not None:
                await engine.remove_lora(served.lora.lora_int_id)
        elif id(served.engine) not in self.router.engines_in_use():
            await served.engine.stop()
            for key in [k for k, v in self.engines.items() if v is served.engine]:
                del self.engines[key]

    async def _drained(self, served: ServedModel) -> None:
        if not await served.drain(self.settings.request_timeout_s):
            logger.warning("%s still had %d requests after draining", served.name, served.in_flight)

    async def promote(self, alias: str, name: str, unload_previous: bool = True) -> SwapResult:
        t0 = time.perf_counter()
        async with self._lock:
            await self._load(name)
            previous = self.router.set_alias(alias, name)
            unloaded = None
            if (
                unload_previous
                and previous
                and previous != name
                and previous not in self.router.aliases().values()
            ):
                try:
                    await self._unload(previous)
                    unloaded = previous
                except APIError as exc:  # e.g. the startup policy: stays loaded
                    logger.info("kept %s after promotion: %s", previous, exc.message)
        seconds = time.perf_counter() - t0
        metrics.SWAPS.labels("policy").inc()
        metrics.SWAP_SECONDS.labels("policy").observe(seconds)
        return SwapResult(alias, name, previous, unloaded, seconds)

    async def promote_reward(self, name: str) -> SwapResult:
        if self.reward is None:
            raise APIError(
                409, "this server runs without a reward model (--reward-model)", code="no_reward_model"
            )
        t0 = time.perf_counter()
        async with self._lock:
            entry = self._entry(name)
            if entry.manifest.kind != "rm" or entry.manifest.format != "full":
                raise APIError(
                    422,
                    f"'{name}' is not a full reward-model checkpoint "
                    f"(kind={entry.manifest.kind}, format={entry.manifest.format})",
                    code="wrong_kind",
                )
            self._check_memory(entry, self.settings.reward_engine_options().kv_cache_gib)
            new = await self._start_engine(f"reward:{name}", self.builder.reward(entry.path, name))
            old, previous = self.reward.engine, self.reward.name
            self.reward.engine, self.reward.name = new, name
            self.engines["reward"] = new
            self.engines.pop(f"reward:{name}", None)
        # Scoring calls hold the engine for well under a second; give them the request
        # timeout at most, then free the old engine.
        deadline = time.monotonic() + self.settings.request_timeout_s
        while (  # noqa: ASYNC110 (polling the engine's own counter; no event to wait on)
            old.ready and old.engine.get_num_unfinished_requests() and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        await old.stop()
        seconds = time.perf_counter() - t0
        metrics.SWAPS.labels("reward").inc()
        metrics.SWAP_SECONDS.labels("reward").observe(seconds)
        return SwapResult("reward", name, previous, previous, seconds)

    def state(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m.name,
                    "kind": m.kind,
                    "format": m.format,
                    "parent": m.parent,
                    "engine": m.engine.name,
                }
                for m in self.router.all()
            ],
            "aliases": self.router.aliases(),
            "reward_model": self.reward.name if self.reward else None,
            "engines": {name: e.status() for name, e in self.engines.items()},
            "registry": str(self.registry.root),
        }


def available_memory() -> int:
    """Bytes a new engine could use: free host memory on CPU, free device memory on GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # no usable CUDA: fall back to host memory
        pass
    return int(psutil.virtual_memory().available)


def registry_listing(registry: Registry) -> dict[str, Any]:
    return {
        "root": str(registry.root),
        "entries": [
            {
                "name": e.name,
                "kind": e.manifest.kind,
                "format": e.manifest.format,
                "base_model": e.manifest.base_model,
                "parent": e.manifest.parent,
                "created_at": e.manifest.created_at,
                "metrics": e.manifest.metrics,
            }
            for e in registry.entries()
        ],
        "problems": registry.problems(),
    }

"""Load, unload and promote registry checkpoints in a running server (the admin API's logic).

- A LoRA entry is added to the policy engine (`AsyncLLM.add_lora`): milliseconds, no new
  engine. Its manifest must name the policy's base, a rank the engine accepts, and no
  `modules_to_save` (vLLM cannot serve those).
- A full entry gets its own engine, started and warmed before any alias points at it; after
  a promotion the previous target drains (requests in flight finish) and its engine is
  freed when nothing else uses it. Unless that engine can take the new weights in place
  (`_reusable_engine`): then the alias switches at once, its new requests wait while the
  previous target drains and the weights load into the same engine (vLLM's
  `reload_weights`), and no second engine starts.
- Reward models: each served policy is reranked by its own (server/rerankers.py says which);
  every distinct reward model in use gets one engine, started (memory checked) before a
  policy switches to it and freed when no policy uses it any more. A promotion may pair the
  alias with a reward model; the pairing is refused (409) when the rerank gate says it makes
  Best-of-N no better than one sample, unless forced. The default reward model (--reward-model)
  swaps like a policy: new engine up first, then the switch.
- With --standby-engine a spare policy engine on the start-up weights is started after /ready
  (outside /ready's engine set) and taken by the first full checkpoint loaded with the same
  layout: its weights load into the spare in place, no engine starts on the request's path,
  and a new spare starts in the background.

Every check runs before anything changes, so a bad entry leaves the server as it was.

Promotions are desired state (core/desired_state.py): a promotion through the admin API is
recorded in the shared registry once its checkpoint is loaded and warm, and only then does the
alias switch. Every server reconciles to the record at start-up and every
`reconcile_interval_s` through the same promote path (warm first, switch, drain, free), so a
fleet converges on what any one replica was told and no request fails on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import psutil

from core.desired_state import (
    AliasRewardModel,
    DesiredState,
    DesiredStateError,
    read_desired,
    set_alias,
    set_reward_model,
)
from core.lora import AdapterError, check_servable_adapter
from core.registry import RERANKER_KINDS, Entry, Registry, RegistryError, RegistryNotFound, is_reranker
from core.rerank import read_evaluations
from server import metrics
from server.config import Settings
from server.engine_config import EngineBuilder
from server.engines import EngineState, ManagedEngine
from server.errors import APIError
from server.models import ModelRouter, ServedModel
from server.rerankers import Pairing, Rerankers, trained_for_links
from server.reward import RewardScorer, make_scorer
from server.startup import PolicyStart

logger = logging.getLogger("bonserve.models")


@dataclass
class SwapResult:
    alias: str
    model: str
    previous: str | None
    unloaded: str | None
    seconds: float
    method: str = "switch"  # "switch" (already loaded), "lora", "new_engine" or "in_place"
    reward_model: str | None = None  # what reranks the alias now (policy promotions)
    rerank: dict[str, Any] | None = None  # its source and the gate's verdict


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
        start: PolicyStart | None = None,
        rerank: Rerankers | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.engines = engines  # name -> engine, for /ready and /metrics
        self.builder = builder
        self.policy_base = policy_base  # base model name LoRA entries must be trained on
        if rerank is None:
            rerank = Rerankers.single(reward)
            rerank.explicit = settings.reward_model_map()
            rerank.allow_unhelpful = settings.allow_unhelpful_reward_model
        self.rerank = rerank  # which reward model reranks each policy, and their scorers
        self.registry = Registry(settings.registry)
        self._start = start
        # The registry entry whose weights the start-up policy engine runs, and the entries
        # served under another name (--served-model-name): desired targets are entry names.
        self.policy_weights = start.weights if start else policy_base
        self._served_as = start.served_as() if start else {}
        self._lock = asyncio.Lock()  # one load/unload/promote/reconcile at a time
        self._next_lora_id = 1
        self._standby: ManagedEngine | None = None  # spare engine on the start-up weights
        self._standby_task: asyncio.Task[None] | None = None  # starting it
        self._closing = False
        self.started = start is None  # /ready waits for `start` (start-up adapter, first reconcile)
        self.startup_error: str | None = None
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # (what, target) -> backoff
        self.reconcile_status: dict[str, Any] = {
            "interval_s": settings.reconcile_interval_s,
            "revision": None,
            "in_sync": None,
            "last_checked": None,
            "errors": {},
        }

    @property
    def reward(self) -> RewardScorer | None:
        """The default reward model's scorer (--reward-model)."""
        return self.rerank.default_scorer

    # ------------------------------------------------------------------ checks

    def _entry(self, name: str) -> Entry:
        try:
            return self.registry.load(name)
        except RegistryError as exc:
            raise _registry_error(exc) from exc

    def _check_lora(self, entry: Entry) -> None:
        lora = self.builder.policy_options
        try:
            check_servable_adapter(entry.path, lora.max_lora_rank)
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
        if not lora.max_loras:
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
            await self._refresh_rerank_inputs(links=True)
            served = await self._load(name)
            await self._sync_rewards(strict=False)
            return served

    def _served(self, name: str) -> str:
        """The served name of registry entry `name` (itself, unless served under another)."""
        return self._served_as.get(name, name)

    def _entry_name(self, served: str) -> str:
        return next((e for e, s in self._served_as.items() if s == served), served)

    async def _load(self, name: str) -> ServedModel:
        return (await self._load_how(name))[0]

    async def _load_how(self, name: str) -> tuple[ServedModel, str]:
        """Serve entry `name`; returns it and how: "switch" (already served), "lora",
        "standby" (loaded into the spare engine) or "new_engine"."""
        name = self._served(name)
        if self.router.is_known(name):
            return self.router.resolve(name), "switch"
        entry = self._entry(name)
        kind, fmt = entry.manifest.kind, entry.manifest.format
        if kind in RERANKER_KINDS:
            raise APIError(
                422,
                f"'{name}' is a reranker (kind {kind}): use POST /admin/reward/promote",
                code="wrong_kind",
            )
        if fmt == "lora":
            self._check_lora(entry)
            return await self._load_lora(entry), "lora"
        engine = await self._take_standby(entry)
        if engine is not None:
            await self._load_into_standby(engine, entry, name)
            method = "standby"
        else:
            self._check_memory(entry)
            engine = await self._start_engine(f"policy:{name}", self.builder.policy(entry.path, name))
            method = "new_engine"
        served = ServedModel(name=name, engine=engine, kind=kind, parent=entry.manifest.parent)
        self.router.add(served)
        return served, method

    async def _base_of(self, entry: Entry) -> ServedModel:
        """The served full model whose weights the adapter was trained on; loaded first when
        no engine runs them (e.g. a replica that started on a promoted full checkpoint)."""
        base = entry.manifest.base_model or self.policy_base
        if base == self.policy_weights:
            return self._policy_model()
        served = self._served(base)
        if self.router.is_known(served) and self.router.resolve(served).lora is None:
            return self.router.resolve(served)
        logger.info("loading %s: the base of adapter %s", base, entry.name)
        return await self._load(base)

    async def _load_lora(self, entry: Entry, served_name: str | None = None) -> ServedModel:
        from vllm.lora.request import LoRARequest

        base = await self._base_of(entry)
        engine = base.engine.require()
        name = served_name or entry.name
        request = LoRARequest(lora_name=name, lora_int_id=self._next_lora_id, lora_path=str(entry.path))
        self._next_lora_id += 1
        try:
            await engine.add_lora(request)
        except Exception as exc:  # vLLM validates the adapter's tensors here
            raise APIError(
                422, f"vLLM refused adapter '{entry.name}': {exc}", code="invalid_checkpoint"
            ) from exc
        served = ServedModel(
            name=name,
            engine=base.engine,
            kind=entry.manifest.kind,
            parent=entry.manifest.parent,
            format="lora",
            lora=request,
            entry=entry.name,
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
            await self._sync_rewards(strict=False)

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

    async def promote(
        self,
        alias: str,
        name: str,
        unload_previous: bool = True,
        *,
        record: bool = True,
        reward_model: str | None = None,
        force: bool = False,
    ) -> SwapResult:
        """Point `alias` at checkpoint `name` (reranked by `reward_model`, else by the rules of
        server/rerankers.py): the policy loaded and warm, the pairing checked by the rerank
        gate (409 unless `force`), its reward model's engine warm, then (with `record`) both
        written to the desired state in one record, then switched; what is no longer used
        drains and is freed."""
        async with self._lock:
            return await self._promote(
                alias, name, unload_previous, record=record, reward_model=reward_model, force=force
            )

    async def _promote(
        self,
        alias: str,
        name: str,
        unload_previous: bool,
        *,
        record: bool,
        reward_model: str | None = None,
        force: bool = False,
        gate: bool = True,
    ) -> SwapResult:
        t0 = time.perf_counter()
        if any(m.name == alias for m in self.router.all()):
            raise APIError(
                409, f"'{alias}' is a checkpoint name, not an alias", param="alias", code="name_conflict"
            )
        if reward_model is not None:
            self._reward_entry(reward_model)  # a missing or wrong entry fails before any loading
        await self._refresh_rerank_inputs(links=True)  # reward models are chosen at promotion
        reuse = self._reusable_engine(alias, name) if unload_previous else None
        if reuse is not None:
            previous_model, entry = reuse
            served = ServedModel(
                name=self._served(name),
                engine=previous_model.engine,
                kind=entry.manifest.kind,
                parent=entry.manifest.parent,
            )
            method = "in_place"
        else:
            served, method = await self._load_how(name)
        paired, pairing = self._pair(alias, served, reward_model, force, gate)
        if pairing.reward_model is not None and pairing.usable:
            await self._ensure_reward(pairing.reward_model)
        if record:
            await self._record(
                lambda root, a, t: set_alias(
                    root,
                    a,
                    t,
                    reward_model=paired.reward_model if paired else None,
                    forced=paired.forced if paired else False,
                ),
                alias,
                self._entry_name(served.name),
            )
        if reuse is not None:
            served.weights_loaded.clear()  # its requests wait for the weights, not the old ones
            self.router.add(served)
        previous = self.router.set_alias(alias, served.name)
        if paired is None:
            self.rerank.paired.pop(alias, None)
        else:
            self.rerank.paired[alias] = paired
        unloaded = None
        if reuse is not None:
            await self._reload_in_place(reuse[0], served, reuse[1])
            unloaded = previous
        elif (
            unload_previous
            and previous
            and previous != served.name
            and previous not in self.router.aliases().values()
        ):
            try:
                await self._unload(previous)
                unloaded = previous
            except APIError as exc:  # e.g. the startup policy: stays loaded
                logger.info("kept %s after promotion: %s", previous, exc.message)
        await self._sync_rewards(strict=False)
        seconds = time.perf_counter() - t0
        metrics.SWAPS.labels("policy").inc()
        metrics.SWAP_SECONDS.labels("policy").observe(seconds)
        card = pairing.card().model_dump()
        return SwapResult(alias, served.name, previous, unloaded, seconds, method, pairing.reward_model, card)

    def _reusable_engine(self, alias: str, name: str) -> tuple[ServedModel, Entry] | None:
        """The alias's current target and the entry `name`, when `name` can be loaded into the
        target's engine in place: both full policy checkpoints with the same architecture,
        tokenizer and weight files (their manifests' checksums say so), and that engine runs
        nothing else - not the start-up policy, no adapter, no other alias's target."""
        if not self.settings.swap_in_place or self.router.is_known(self._served(name)):
            return None
        current = self.router.aliases().get(alias)
        if current is None or not self.router.is_known(current):
            return None
        previous = self.router.resolve(current)
        engine = previous.engine
        shared = [m for m in self.router.all() if m.engine is engine and m is not previous]
        others = [a for a, t in self.router.aliases().items() if a != alias and t == current]
        if previous.lora is not None or engine is self.engines.get("policy") or shared or others:
            return None
        new = self._entry(name)
        try:
            old = self.registry.load(self._entry_name(current))
        except RegistryError:  # a directory checkpoint: nothing to compare against
            return None
        if (
            new.manifest.kind in RERANKER_KINDS
            or new.manifest.format != "full"
            or old.manifest.format != "full"
        ):
            return None
        if _layout(new) != _layout(old):
            return None
        self._check_memory(new, kv_cache_gib=0)  # the new weights are read while the old ones stay
        return previous, new

    async def _reload_in_place(self, previous: ServedModel, served: ServedModel, entry: Entry) -> None:
        """Drain the previous target, load `entry`'s weights into its engine, let the waiting
        requests go. A failed load restarts the engine on the new checkpoint (its factory is
        the new one by then), so nothing keeps decoding with half-loaded weights."""
        self.router.remove(previous.name)
        await self._drained(previous)
        managed = served.engine
        old_key = next(k for k, v in self.engines.items() if v is managed)
        managed.retarget(f"policy:{served.name}", self.builder.policy(entry.path, served.name))
        del self.engines[old_key]
        self.engines[managed.name] = managed
        try:
            await managed.reload_weights(str(entry.path))
        except Exception as exc:
            logger.error("in-place load of %s failed (%s); restarting its engine", entry.name, _message(exc))
            await managed.restart(f"in-place weight load failed: {_message(exc)}")
        finally:
            served.weights_loaded.set()

    # ------------------------------------------------------------------ standby engine

    def _fill_standby(self) -> None:
        """Start the spare engine in the background, if configured and none runs or starts."""
        if not self.settings.standby_engine or self._closing or self._standby is not None:
            return
        if self._standby_task is not None and not self._standby_task.done():
            return
        self._standby_task = asyncio.create_task(self._start_standby(), name="standby-engine")

    def _standby_weights(self) -> Entry | None:
        """The registry entry the spare engine runs: the start-up policy's weights."""
        try:
            return self.registry.load(self.policy_weights)
        except RegistryError:  # a checkpoint directory: no manifest to compare layouts with
            return None

    async def _start_standby(self) -> None:
        entry = self._standby_weights()
        if entry is None:
            logger.warning(
                "no standby engine: the start-up weights '%s' are not a registry entry", self.policy_weights
            )
            return
        try:
            self._check_memory(entry)
        except APIError as exc:
            logger.warning("no standby engine: %s", exc.message)
            return
        engine = ManagedEngine(
            "standby",
            self.builder.policy(entry.path, self._served(entry.name), "standby"),
            restart_backoff_s=self.settings.engine_restart_backoff_s,
        )
        await engine.start()
        if engine.state != EngineState.RUNNING or self._closing:
            if engine.state != EngineState.RUNNING:
                logger.warning("standby engine failed to start: %s", engine.last_error)
            await engine.stop()
            return
        self._standby = engine
        logger.info("standby engine ready on %s", entry.name)

    async def _take_standby(self, entry: Entry) -> ManagedEngine | None:
        """The spare engine, when `entry`'s weights can load into it in place: a full policy
        checkpoint with the start-up weights' layout. Waits for a spare that is still
        starting (sooner than starting another engine)."""
        if not self.settings.standby_engine or self._standby_task is None:
            return None
        holds = self._standby_weights()
        if holds is None or entry.manifest.format != "full" or _layout(entry) != _layout(holds):
            return None
        if not self._standby_task.done():
            logger.info("waiting for the standby engine to finish starting")
            await asyncio.shield(self._standby_task)
        engine = self._standby
        if engine is None or engine.state != EngineState.RUNNING:
            return None
        self._check_memory(entry, kv_cache_gib=0)  # the new weights are read while the old ones stay
        self._standby = None
        return engine

    async def _load_into_standby(self, engine: ManagedEngine, entry: Entry, name: str) -> None:
        """Load `entry` into the spare engine (nothing decodes on it), register it under
        `name`, start the next spare. A failed load restarts it on the new checkpoint."""
        engine.retarget(f"policy:{name}", self.builder.policy(entry.path, name))
        try:
            await engine.reload_weights(str(entry.path))
        except Exception as exc:
            logger.error("standby load of %s failed (%s); restarting its engine", entry.name, _message(exc))
            await engine.restart(f"standby weight load failed: {_message(exc)}")
            if engine.state != EngineState.RUNNING:
                await engine.stop()
                self._fill_standby()
                message = f"engine for '{name}' failed to start: {engine.last_error}"
                raise APIError(422, message, code="invalid_checkpoint") from exc
        self.engines[engine.name] = engine
        self._fill_standby()

    async def close(self, timeout_s: float = 120.0) -> None:
        """Stop the spare engine (waiting for one still starting, so its processes are not
        left behind); the served engines are stopped by the caller."""
        self._closing = True
        task = self._standby_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                logger.warning("standby engine still starting after %.0fs; leaving it", timeout_s)
                task.cancel()
        if self._standby is not None:
            await self._standby.stop()
            self._standby = None

    def standby_status(self) -> dict[str, Any] | None:
        """What /ready shows of the spare engine (None without --standby-engine)."""
        if not self.settings.standby_engine:
            return None
        if self._standby is not None:
            return self._standby.status()
        starting = self._standby_task is not None and not self._standby_task.done()
        return {"state": "starting" if starting else "none"}

    def _pair(
        self, alias: str, served: ServedModel, reward_model: str | None, force: bool, gate: bool
    ) -> tuple[AliasRewardModel | None, Pairing]:
        """The pairing `alias` -> `served` would have, and what to record for it; refuses
        (409) one the rerank gate refuses unless forced. A forced pairing the rules chose is
        recorded as the alias's own, so every replica applies it forced."""
        paired = AliasRewardModel(reward_model, force) if reward_model is not None else None
        pairing = self.rerank.resolve(alias, served, paired)
        if not gate:  # reconciling: the pairing as recorded (it passed the gate, or was forced)
            return paired, pairing
        refused = pairing.verdict is not None and not pairing.verdict.allowed
        if not refused:
            return (AliasRewardModel(reward_model, False) if reward_model is not None else None), pairing
        if not (force or self.settings.allow_unhelpful_reward_model):
            assert pairing.verdict is not None
            raise APIError(
                409,
                f"refusing to rerank '{alias}' -> '{served.name}' with reward model "
                f"'{pairing.reward_model}' ({pairing.source}): {pairing.verdict.reason}. Promote with "
                'another reward_model, send "force": true to pair it anyway (flagged in /v1/models and '
                "bonserve_rerank_forced), or rank with bon_selector 'majority' or 'logprob'",
                param="reward_model",
                code="unhelpful_reward_model",
            )
        assert pairing.reward_model is not None
        paired = AliasRewardModel(pairing.reward_model, True)
        return paired, self.rerank.resolve(alias, served, paired)

    async def _record(self, write: Any, *args: str) -> DesiredState:
        try:
            return await asyncio.to_thread(write, self.registry.root, *args)
        except DesiredStateError as exc:
            raise APIError(
                503,
                f"the promotion was not recorded, so nothing switched: {exc}",
                type="service_unavailable",
                code="state_not_recorded",
            ) from exc

    async def promote_reward(self, name: str, *, record: bool = True, force: bool = False) -> SwapResult:
        """Make `name` the default reward model (--reward-model's): its engine up first (or the
        one already scoring some policy), then recorded, then switched; the previous default's
        engine is freed once no request and no policy uses it. Refused (409) when the rerank
        gate refuses `name` for a served policy it would rerank, unless `force` (those
        pairings then do not rerank, unless --allow-unhelpful-reward-model)."""
        if self.rerank.default is None:
            raise APIError(
                409,
                "this server runs without a default reward model (--reward-model)",
                code="no_reward_model",
            )
        t0 = time.perf_counter()
        async with self._lock:
            self._reward_entry(name)
            await self._refresh_rerank_inputs(links=False)  # the gate reads the latest evaluations
            self._gate_default(name, force)
            method = "switch" if name in self.rerank.scorers else "new_engine"
            previous = await self._switch_reward(name, record=record)
            await self._sync_rewards(strict=False)
        seconds = time.perf_counter() - t0
        metrics.SWAPS.labels("reward").inc()
        metrics.SWAP_SECONDS.labels("reward").observe(seconds)
        unloaded = previous if previous not in self.rerank.scorers else None
        return SwapResult("reward", name, previous, unloaded, seconds, method)

    def _gate_default(self, name: str, force: bool) -> None:
        """Refuse (409) making `name` the default reward model when the rerank gate refuses it
        for a served name the default would rerank, unless `force` or the start-up setting."""
        if force or self.settings.allow_unhelpful_reward_model:
            return
        would = replace(self.rerank, default=name, scorers={}, _exported=set())
        refused = [
            p
            for p in would.pairings(self.router).values()
            if p.source == "--reward-model" and p.verdict is not None and not p.verdict.allowed
        ]
        if refused:
            reasons = "; ".join(f"'{p.name}': {p.verdict.reason}" for p in refused if p.verdict)
            raise APIError(
                409,
                f"refusing to make '{name}' the default reward model: the rerank gate refuses it for "
                f"{reasons}. Pair those policies with another reward model (promotion reward_model "
                'or --reward-models), or send "force": true (they then do not rerank with it, '
                "unless the server runs with --allow-unhelpful-reward-model)",
                param="model",
                code="unhelpful_reward_model",
            )

    def _reward_entry(self, name: str) -> Entry:
        entry = self._entry(name)
        if not is_reranker(entry.manifest):
            raise APIError(
                422,
                f"'{name}' is not a full reward-model or verifier checkpoint "
                f"(kind={entry.manifest.kind}, format={entry.manifest.format})",
                param="reward_model",
                code="wrong_kind",
            )
        return entry

    async def _switch_reward(self, name: str, *, record: bool) -> str:
        """Start (or reuse) the engine of `name`, record it, make it the default; returns the
        previous default."""
        previous = self.rerank.default
        assert previous is not None
        self._reward_entry(name)
        started = name not in self.rerank.scorers
        await self._ensure_reward(name)
        if record:
            try:
                await self._record(set_reward_model, name)
            except APIError:
                if started:
                    await self._retire_reward(name)
                raise
        self.rerank.default = name
        self._rekey_reward_engines()
        return previous

    async def _ensure_reward(self, name: str) -> RewardScorer:
        """The scorer of reward model `name`, its engine started (memory checked) if none runs."""
        scorer = self.rerank.scorers.get(name)
        if scorer is not None:
            return scorer
        entry = self._reward_entry(name)
        self._check_memory(entry, self.settings.reward_engine_options().kv_cache_gib)
        key = self.rerank.engine_key(name)
        kind = entry.manifest.kind
        engine = await self._start_engine(key, self.builder.reranker(entry.path, name, key, kind))
        scorer = make_scorer(engine, name, kind)
        self.rerank.scorers[name] = scorer
        return scorer

    def _rekey_reward_engines(self) -> None:
        """Engine keys follow the default: 'reward' for it, 'reward:NAME' for the others."""
        for key in [k for k in self.engines if k == "reward" or k.startswith("reward:")]:
            del self.engines[key]
        for name, scorer in self.rerank.scorers.items():
            self.engines[self.rerank.engine_key(name)] = scorer.engine

    async def _retire_reward(self, name: str) -> None:
        """Stop reward model `name`'s engine once the requests using it are ranked (the request
        timeout at most)."""
        scorer = self.rerank.scorers.pop(name, None)
        if scorer is None:
            return
        self._rekey_reward_engines()
        deadline = time.monotonic() + self.settings.request_timeout_s
        while scorer.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 (a counter)
            await asyncio.sleep(0.1)
        await scorer.engine.stop()
        logger.info("freed the engine of reward model %s", name)

    async def _sync_rewards(self, *, strict: bool) -> None:
        """Run exactly the reward engines the current pairings use (and the default): start
        the missing ones (an error with `strict`, else logged and retried by reconcile) and
        free the unused; then export the rerank gauges."""
        needed = self.rerank.needed(self.router)
        for name in sorted(needed - set(self.rerank.scorers)):
            if not strict and not self._due("reward:" + name, name):
                continue
            try:
                await self._ensure_reward(name)
                self._failures.pop(("reward:" + name, name), None)
                self.reconcile_status["errors"].pop("reward:" + name, None)
            except Exception as exc:
                if strict:
                    raise
                self._failed("reward:" + name, name, _message(exc))
        for name in sorted(set(self.rerank.scorers) - needed - {self.rerank.default}):
            await self._retire_reward(name)
        self.rerank.export(self.router)

    async def _refresh_rerank_inputs(self, *, links: bool) -> None:
        """Re-read the recorded evaluations (the gate's input) and, with `links`, the reward
        models' trained_for links (only on servers that rerank: --reward-model or
        --reward-models). A damaged record keeps the previous one (logged)."""
        try:
            self.rerank.evaluations = await asyncio.to_thread(read_evaluations, self.registry.root)
        except DesiredStateError as exc:
            logger.warning("keeping the previous rerank evaluations: %s", exc)
        if links and (self.settings.reward_model or self.settings.reward_models):
            self.rerank.links = await asyncio.to_thread(trained_for_links, self.registry)

    # ------------------------------------------------------------------ desired state

    async def start(self) -> None:
        """After the engines are up: add the start-up adapter (a LoRA --model), point the
        alias at it, reconcile once; then /ready may turn true. A failed reconcile does not
        keep the replica from serving (it retries); a start-up adapter that fails does."""
        start = self._start
        if start is not None and start.lora is not None:
            try:
                async with self._lock:
                    served = await self._load_lora(start.lora, start.lora_name)
                    if self.settings.alias:
                        self.router.set_alias(self.settings.alias, served.name)
            except Exception as exc:
                self.startup_error = _message(exc)
                logger.error("start-up adapter %s failed: %s", start.lora.name, self.startup_error)
                return
        async with self._lock:  # the reward models of the start-up policies (mapped, linked)
            await self._refresh_rerank_inputs(links=True)
            await self._sync_rewards(strict=False)
        try:
            await self.reconcile()
        except Exception:
            logger.exception("start-up reconcile failed; serving the start-up checkpoints")
        self.started = True
        self._fill_standby()  # after /ready: the spare never delays serving

    async def follow(self, interval_s: float) -> None:
        """Reconcile every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reconcile()
            except Exception:  # keep following: the next pass may succeed
                metrics.DESIRED_STATE_IN_SYNC.set(0)
                logger.exception("reconcile pass failed")

    def _pending(self, desired: DesiredState) -> tuple[dict[str, str], str | None]:
        """What differs between `desired` and what this server serves: aliases whose target
        or reward-model pairing differs, and the default reward model."""
        current = self.router.aliases()
        paired = desired.alias_reward_models
        aliases = {
            a: t
            for a, t in desired.aliases.items()
            if current.get(a) != self._served(t) or paired.get(a) != self.rerank.paired.get(a)
        }
        reward = desired.reward_model
        if self.rerank.default is None or reward is None or reward == self.rerank.default:
            reward = None
        return aliases, reward

    def _due(self, what: str, target: str) -> bool:
        return time.monotonic() >= self._failures.get((what, target), (0, 0.0))[1]

    def _failed(self, what: str, target: str, message: str) -> None:
        attempts = self._failures.get((what, target), (0, 0.0))[0] + 1
        delay = min(max(self.settings.reconcile_interval_s, 1.0) * 2**attempts, 300.0)
        self._failures[(what, target)] = (attempts, time.monotonic() + delay)
        self.reconcile_status["errors"][what] = {"target": target, "error": message, "attempts": attempts}
        metrics.RECONCILE_FAILURES.inc()
        logger.warning(
            "cannot reconcile %s -> %s (attempt %d, next in %.0fs): %s",
            what,
            target,
            attempts,
            delay,
            message,
        )

    async def reconcile(self) -> bool:
        """One pass: make this server's aliases and reward model what the registry's desired
        state says. True when in sync afterwards. Failures are logged, kept in
        `reconcile_status` and retried with backoff; what already matches is left alone."""
        try:
            desired = await asyncio.to_thread(read_desired, self.registry.root)
        except DesiredStateError as exc:
            self.reconcile_status.update(in_sync=False, last_checked=time.time())
            self.reconcile_status["errors"]["state"] = {"error": str(exc)}
            metrics.DESIRED_STATE_IN_SYNC.set(0)  # what the out-of-sync alert reads
            logger.warning("cannot read the desired state: %s", exc)
            return False
        self.reconcile_status["errors"].pop("state", None)
        if any(self._pending(desired)):
            desired = await self._apply(desired)
        evaluations = self.rerank.evaluations
        await self._refresh_rerank_inputs(links=False)  # a new evaluation changes the gate at once
        missing = self.rerank.needed(self.router) - set(self.rerank.scorers)
        if missing or self.rerank.evaluations != evaluations:
            async with self._lock:
                await self._sync_rewards(strict=False)
            missing = self.rerank.needed(self.router) - set(self.rerank.scorers)
        aliases, reward = self._pending(desired)
        in_sync = not aliases and reward is None
        errors = self.reconcile_status["errors"]
        for what in [
            w
            for w in errors
            if w not in aliases
            and not (w == "reward_model" and reward)
            and not (w.startswith("reward:") and w[len("reward:") :] in missing)
        ]:
            del errors[what]  # fixed since, or no longer wanted
        self.reconcile_status.update(revision=desired.revision, in_sync=in_sync, last_checked=time.time())
        metrics.DESIRED_STATE_IN_SYNC.set(1 if in_sync else 0)
        return in_sync

    async def _apply(self, desired: DesiredState) -> DesiredState:
        async with self._lock:
            # Read again under the lock: an admin promotion on this server may have recorded
            # a newer state while the first read waited, and must not be undone.
            with contextlib.suppress(DesiredStateError):  # unreadable now: apply the first read
                desired = await asyncio.to_thread(read_desired, self.registry.root)
            aliases, reward = self._pending(desired)
            for alias, target in aliases.items():
                if not self._due(alias, target):
                    continue
                pairing = desired.alias_reward_models.get(alias)
                try:
                    result = await self._promote(
                        alias,
                        target,
                        True,
                        record=False,
                        reward_model=pairing.reward_model if pairing else None,
                        force=pairing.forced if pairing else False,
                        gate=False,
                    )
                    self._failures.pop((alias, target), None)
                    logger.info(
                        "reconciled %s -> %s (was %s, %.1fs)", alias, target, result.previous, result.seconds
                    )
                except Exception as exc:
                    self._failed(alias, target, _message(exc))
            if reward is not None and self._due("reward_model", reward):
                t0 = time.perf_counter()
                try:
                    previous = await self._switch_reward(reward, record=False)
                    await self._sync_rewards(strict=False)  # frees the previous default if unused
                    self._failures.pop(("reward_model", reward), None)
                    seconds = time.perf_counter() - t0
                    metrics.SWAPS.labels("reward").inc()
                    metrics.SWAP_SECONDS.labels("reward").observe(seconds)
                    logger.info("reconciled reward model -> %s (was %s, %.1fs)", reward, previous, seconds)
                except Exception as exc:
                    self._failed("reward_model", reward, _message(exc))
        return desired

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
            "reward_model": self.rerank.default,  # the default (--reward-model)
            "reward_models": sorted(self.rerank.scorers),  # every reward engine running
            "rerank": {name: p.card().model_dump() for name, p in self.rerank.pairings(self.router).items()},
            "engines": {name: e.status() for name, e in self.engines.items()},
            "standby_engine": self.standby_status(),
            "registry": str(self.registry.root),
            "started_from": self._start.source if self._start else None,
            "startup_error": self.startup_error,
            "reconcile": self.reconcile_status,
        }


def _layout(entry: Entry) -> dict[str, str | int]:
    """What must match for one checkpoint's weights to load into another's engine: every
    non-weight file by checksum (config, tokenizer, templates), weight files by size."""
    layout: dict[str, str | int] = {}
    for rel, info in entry.manifest.files.items():
        weights = rel.endswith((".safetensors", ".bin"))
        layout[rel] = int(info["size"]) if weights else str(info.get("sha256"))
    return layout


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"


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

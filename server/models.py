"""What clients can name as `model`: served checkpoints and aliases that point at them.

A served model is a checkpoint running on an engine: a full checkpoint has its own engine, a
LoRA checkpoint runs on its base's engine with a LoRA request. An alias (e.g. `policy`) is a
stable name whose target can be switched atomically: a request resolves the alias once, when
it arrives, so requests in flight finish on the checkpoint they started on. Responses carry
the checkpoint's name in `model`, which makes every answer attributable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from server.engines import ManagedEngine
from server.errors import APIError
from server.protocol import now


def _loaded() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class ServedModel:
    name: str
    engine: ManagedEngine
    kind: str = "base"
    parent: str | None = None
    format: str = "full"
    lora: Any = None  # vllm.lora.request.LoRARequest for LoRA checkpoints
    entry: str | None = None  # its registry entry, when served under another name (--served-model-name)
    created: int = field(default_factory=now)
    in_flight: int = 0  # requests resolved to this checkpoint and not yet finished
    # Clear while its engine takes these weights in place (ModelManager's in-place swap):
    # requests resolved to it wait before decoding rather than run on the previous weights.
    weights_loaded: asyncio.Event = field(default_factory=_loaded)

    @property
    def entry_name(self) -> str:
        """The registry entry (or checkpoint directory) name: what evaluations are keyed by."""
        return self.entry or self.name

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count a request as in flight on this checkpoint (what `drain` waits for)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def drain(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Wait until no request uses this checkpoint (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (a counter)
            await asyncio.sleep(poll_s)
        return self.in_flight == 0


class ModelRouter:
    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self._aliases: dict[str, str] = {}

    def add(self, model: ServedModel) -> None:
        if model.name in self._aliases:
            raise APIError(
                409,
                f"'{model.name}' is an alias; checkpoints and aliases need distinct names",
                param="model",
                code="name_conflict",
            )
        self._models[model.name] = model

    def remove(self, name: str) -> ServedModel:
        targets = [a for a, t in self._aliases.items() if t == name]
        if targets:
            raise APIError(
                409,
                f"'{name}' is the target of alias(es) {targets}; promote another checkpoint first",
                param="model",
                code="model_in_use",
            )
        if name not in self._models:
            raise self._not_found(name)
        return self._models.pop(name)

    def set_alias(self, alias: str, target: str) -> str | None:
        """Point `alias` at a served checkpoint; returns the previous target. Atomic: one
        dict assignment between two awaits."""
        if alias in self._models:
            raise APIError(
                409, f"'{alias}' is a checkpoint name, not an alias", param="alias", code="name_conflict"
            )
        if target not in self._models:
            raise self._not_found(target)
        previous = self._aliases.get(alias)
        self._aliases[alias] = target
        return previous

    def resolve(self, name: str) -> ServedModel:
        target = self._aliases.get(name, name)
        try:
            return self._models[target]
        except KeyError:
            raise self._not_found(name) from None

    def is_known(self, name: str) -> bool:
        return name in self._models or name in self._aliases

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def engines_in_use(self) -> set[int]:
        return {id(m.engine) for m in self._models.values()}

    def _not_found(self, name: str) -> APIError:
        known = ", ".join(sorted([*self._models, *self._aliases])) or "none"
        return APIError(
            404,
            f"The model '{name}' does not exist. Served models: {known}",
            param="model",
            code="model_not_found",
        )

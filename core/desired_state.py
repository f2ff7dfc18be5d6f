"""The fleet's desired serving state: which checkpoint each alias points at (and, when the
promotion named one, which reward model reranks that alias's Best-of-N), and the default reward
model. One small JSON file in the shared registry,

    <registry root>/_state/aliases.json

written by a promotion (the admin API, or anything else that imports this module) and read by
every server, which reconciles to it at start-up and by polling. So every replica converges
on the promoted checkpoint, and a replica started later starts on it.

Atomicity: the file is replaced whole (a temp file in the same directory, fsync, os.replace),
so a reader sees the old state or the new one, never a mix; writers serialise their
read-modify-write on an flock'ed lock file beside it. `_state` cannot be an entry name (names
start with a letter or digit), so the registry never lists it.

An alias and its reward model are one record, written together: `alias_reward_models` holds
the pairing a promotion made (absent: the server's own rules pick the reward model). Files
written before pairings existed read as having none, and readers that predate them ignore
the key, so the schema version stays 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.registry import RegistryError, check_name

STATE_DIR = "_state"
ALIASES_FILE = "aliases.json"
SCHEMA_VERSION = 1
HISTORY_KEPT = 50
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DesiredStateError(RegistryError):
    """The desired-state file is unreadable, malformed, or could not be written."""


@dataclass
class Change:
    """One recorded promotion (newest last in `DesiredState.history`)."""

    what: str  # an alias name, or "reward_model"
    to: str
    previous: str | None
    at: float
    by: str
    reward_model: str | None = None  # the reward model paired with the alias by this promotion
    forced: bool = False  # paired although the rerank gate refuses it (core/rerank.py)


@dataclass
class AliasRewardModel:
    """The reward model a promotion paired with an alias."""

    reward_model: str
    forced: bool = False  # the gate refused the pairing and the promotion overrode it


@dataclass
class DesiredState:
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> registry entry name
    reward_model: str | None = None  # the default reward model (servers with --reward-model)
    alias_reward_models: dict[str, AliasRewardModel] = field(default_factory=dict)
    revision: int = 0  # +1 per write: lets readers tell a new state from the one they applied
    updated_at: float | None = None
    updated_by: str | None = None
    history: list[Change] = field(default_factory=list)
    version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise DesiredStateError("desired state: not a JSON object")
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise DesiredStateError(f"desired state: schema version {version!r}, this bonserve reads 1")
        aliases = data.get("aliases", {})
        if not isinstance(aliases, dict) or not all(
            isinstance(a, str) and isinstance(t, str) for a, t in aliases.items()
        ):
            raise DesiredStateError("desired state: 'aliases' must map alias names to entry names")
        for alias, target in aliases.items():
            check_alias(alias)
            check_target(target)
        reward = data.get("reward_model")
        if reward is not None:
            if not isinstance(reward, str):
                raise DesiredStateError("desired state: 'reward_model' must be an entry name or null")
            check_target(reward)
        pairings = data.get("alias_reward_models", {})
        if not isinstance(pairings, dict):
            raise DesiredStateError("desired state: 'alias_reward_models' must map aliases to pairings")
        try:
            paired = {a: AliasRewardModel(**p) for a, p in pairings.items()}
        except TypeError as exc:
            raise DesiredStateError(f"desired state: malformed 'alias_reward_models' ({exc})") from exc
        for alias, pairing in paired.items():
            if alias not in aliases:
                raise DesiredStateError(f"desired state: reward model paired with unknown alias {alias!r}")
            if not isinstance(pairing.reward_model, str) or not isinstance(pairing.forced, bool):
                raise DesiredStateError(f"desired state: malformed reward-model pairing of {alias!r}")
            check_target(pairing.reward_model)
        try:
            history = [Change(**c) for c in data.get("history", [])]
            return cls(
                aliases=dict(aliases),
                reward_model=reward,
                alias_reward_models=paired,
                revision=int(data.get("revision", 0)),
                updated_at=data.get("updated_at"),
                updated_by=data.get("updated_by"),
                history=history,
                version=version,
            )
        except (TypeError, ValueError) as exc:
            raise DesiredStateError(f"desired state: malformed field ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise DesiredStateError(f"invalid alias {alias!r}: use letters, digits, '.', '_' and '-'")
    return alias


def check_target(name: str) -> str:
    try:
        return check_name(name)
    except RegistryError as exc:
        raise DesiredStateError(f"desired state: {exc}") from exc


def state_path(registry_root: Path | str) -> Path:
    return Path(registry_root) / STATE_DIR / ALIASES_FILE


def read_desired(registry_root: Path | str) -> DesiredState:
    """The recorded state; an empty one when nothing was ever promoted."""
    path = state_path(registry_root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DesiredState()
    except OSError as exc:
        raise DesiredStateError(f"cannot read {path}: {exc}") from exc
    try:
        return DesiredState.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise DesiredStateError(f"{path} is not valid JSON: {exc}") from exc


def _write(path: Path, state: DesiredState) -> None:
    write_json_atomic(path, state.to_dict())


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` whole (temp file, fsync, rename): readers see the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not every filesystem allows it)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise read-modify-write of the files in `directory` (an flock'ed `.lock`)."""
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_writer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def update_desired(
    registry_root: Path | str, change: Callable[[DesiredState], list[Change]], by: str | None = None
) -> DesiredState:
    """Read, apply `change` (which edits the state and returns what it changed), write back.
    Serialised with other writers; a change that changes nothing writes nothing."""
    path = state_path(registry_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.parent):
            state = read_desired(registry_root)
            changes = change(state)
            if not changes:
                return state
            state.revision += 1
            state.updated_at = time.time()
            state.updated_by = by or default_writer()
            state.history = [*state.history, *changes][-HISTORY_KEPT:]
            _write(path, state)
            return state
    except OSError as exc:
        raise DesiredStateError(
            f"cannot record the desired state in {path}: {exc} (the registry's {STATE_DIR}/ "
            "directory must be writable)"
        ) from exc


def set_alias(
    registry_root: Path | str,
    alias: str,
    target: str,
    by: str | None = None,
    *,
    reward_model: str | None = None,
    forced: bool = False,
) -> DesiredState:
    """Record `alias` -> `target` (a registry entry name) and, in the same write, the reward
    model paired with it (None: no pairing, the servers' own rules choose)."""
    check_alias(alias)
    check_target(target)
    if reward_model is not None:
        check_target(reward_model)
    pairing = AliasRewardModel(reward_model, forced) if reward_model is not None else None

    def change(state: DesiredState) -> list[Change]:
        previous = state.aliases.get(alias)
        if previous == target and state.alias_reward_models.get(alias) == pairing:
            return []
        state.aliases[alias] = target
        if pairing is None:
            state.alias_reward_models.pop(alias, None)
        else:
            state.alias_reward_models[alias] = pairing
        return [Change(alias, target, previous, time.time(), by or default_writer(), reward_model, forced)]

    return update_desired(registry_root, change, by)


def set_reward_model(registry_root: Path | str, name: str, by: str | None = None) -> DesiredState:
    """Record the reward model every server with a reward engine should score with."""
    check_target(name)

    def change(state: DesiredState) -> list[Change]:
        previous = state.reward_model
        if previous == name:
            return []
        state.reward_model = name
        return [Change("reward_model", name, previous, time.time(), by or default_writer())]

    return update_desired(registry_root, change, by)


def format_desired(registry_root: Path | str) -> str:
    """`bonserve registry aliases`: the recorded aliases, reward model and recent changes."""
    state = read_desired(registry_root)
    path = state_path(registry_root)
    if not state.revision:
        return f"(nothing promoted yet: no {path})"
    lines = [f"{path} (revision {state.revision})"]
    width = max([len(a) for a in state.aliases] + [len("reward_model")])
    for alias, target in sorted(state.aliases.items()):
        pairing = state.alias_reward_models.get(alias)
        paired = (
            f"  (reward model {pairing.reward_model}{', forced' if pairing.forced else ''})"
            if pairing
            else ""
        )
        lines.append(f"  {alias.ljust(width)}  -> {target}{paired}")
    lines.append(f"  {'reward_model'.ljust(width)}  -> {state.reward_model or '-'}")
    if state.history:
        lines.append("recent changes:")
        for c in state.history[-10:]:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.at))
            paired = f" + {c.reward_model}{' (forced)' if c.forced else ''}" if c.reward_model else ""
            lines.append(f"  {at}  {c.what}: {c.previous or '-'} -> {c.to}{paired}  ({c.by})")
    return "\n".join(lines)

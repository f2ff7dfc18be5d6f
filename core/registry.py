"""Checkpoint registry: one directory per checkpoint, a manifest written last.

The registry is shared by `training/` (which writes entries) and `server/` (which lists and
loads them), so the manifest format has exactly one home: this module, in the bottom layer.

Atomicity: an entry is built in a hidden staging directory next to the final one and
renamed into place only after its files are complete and the manifest (with a checksum of
every file) is written. A directory without a manifest, or whose files do not match it, is
never a valid entry: an interrupted write cannot be served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The entry `bonserve models prepare` builds, and what every command starts from by default.
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
MANIFEST = "manifest.json"
KINDS = ("base", "sft", "rm", "dpo", "ppo", "grpo", "rloo", "verifier")
# What can rerank Best-of-N candidates: a score model (rm, one logit per reply) or a generative
# verifier (writes its check out; core/verifier.py). Neither is served as a policy.
RERANKER_KINDS = ("rm", "verifier")
FORMATS = ("full", "lora")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STAGING_PREFIX = ".staging-"


class RegistryError(ValueError):
    """A registry entry is missing, partial, corrupt or not allowed."""


class RegistryNotFound(RegistryError):
    """No entry (not even a partial one) of that name."""


def bonserve_home() -> Path:
    """Root of everything bonserve stores locally (`$BONSERVE_HOME`, default ~/.cache/bonserve)."""
    return Path(os.environ.get("BONSERVE_HOME", Path.home() / ".cache" / "bonserve")).expanduser()


def default_registry_root() -> Path:
    return bonserve_home() / "registry"


def check_name(name: str) -> str:
    """Entry names become directory names, so they must not be able to escape the root."""
    if not _NAME_RE.match(name) or name.endswith(".json"):
        raise RegistryError(
            f"invalid checkpoint name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, not starting with '.')"
        )
    return name


@dataclass
class Manifest:
    """What a checkpoint is and where it came from."""

    name: str
    kind: str
    format: str = "full"
    base_model: str | None = None
    parent: str | None = None
    data_hash: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in KINDS:
            raise RegistryError(f"manifest kind {self.kind!r} is not one of {KINDS}")
        if self.format not in FORMATS:
            raise RegistryError(f"manifest format {self.format!r} is not one of {FORMATS}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise RegistryError(f"manifest has unknown fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise RegistryError(f"manifest is incomplete: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_table(directory: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(directory).as_posix()
            table[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


@dataclass
class Entry:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name


class Registry:
    """A directory of checkpoints; every path it hands out lies inside `root`."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_registry_root()

    def path_of(self, name: str) -> Path:
        path = (self.root / check_name(name)).resolve()
        if path.parent != self.root.resolve():
            raise RegistryError(f"checkpoint {name!r} is outside the registry root")
        return path

    def load(self, name: str, *, deep: bool = False) -> Entry:
        """Read and verify one entry; `deep` also re-hashes every file (slow for big weights)."""
        path = self.path_of(name)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise RegistryNotFound(f"checkpoint {name!r} not found in registry {self.root}")
        if not manifest_path.is_file():
            raise RegistryError(f"checkpoint {name!r} has no {MANIFEST}: partial or foreign write")
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"checkpoint {name!r} has a corrupt manifest: {exc}") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"checkpoint {name!r} has a corrupt manifest: not an object")
        manifest = Manifest.from_dict(data)
        if manifest.name != name:
            raise RegistryError(f"checkpoint {name!r} has a manifest for {manifest.name!r}")
        if not manifest.files:
            raise RegistryError(f"checkpoint {name!r} lists no files")
        for rel, info in manifest.files.items():
            file = path / rel
            if not file.is_file():
                raise RegistryError(f"checkpoint {name!r} is missing file {rel}")
            if file.stat().st_size != info.get("size"):
                raise RegistryError(f"checkpoint {name!r}: {rel} has the wrong size")
            if deep and sha256_file(file) != info.get("sha256"):
                raise RegistryError(f"checkpoint {name!r}: {rel} fails its checksum")
        return Entry(path=path, manifest=manifest)

    def entries(self) -> list[Entry]:
        """Every valid entry; invalid ones are skipped (they are reported by `problems`)."""
        found = []
        for name in self._names():
            with contextlib.suppress(RegistryError):
                found.append(self.load(name))
        return found

    def problems(self) -> dict[str, str]:
        bad = {}
        for name in self._names():
            try:
                self.load(name)
            except RegistryError as exc:
                bad[name] = str(exc)
        return bad

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    @contextlib.contextmanager
    def write(self, manifest: Manifest) -> Iterator[Path]:
        """Yield a staging directory; on clean exit hash its files and move it into place.

        An exception inside the block removes the staging directory and leaves any
        existing entry of the same name untouched.
        """
        final = self.path_of(manifest.name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{_STAGING_PREFIX}{manifest.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            manifest.files = _file_table(staging)
            tmp = staging / f"{MANIFEST}.tmp"
            tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
            os.replace(tmp, staging / MANIFEST)
            if final.exists():
                trash = self.root / f"{_STAGING_PREFIX}old-{manifest.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove_stale_staging(self) -> list[str]:
        """Delete leftovers of interrupted writes (they are never valid entries)."""
        if not self.root.is_dir():
            return []
        removed = []
        for p in self.root.iterdir():
            if p.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


# --------------------------------------------------------------------------- `bonserve registry`


def format_list(registry: Registry) -> str:
    """One line per valid entry (name, kind, format, parent, created), then invalid ones."""
    rows = [("NAME", "KIND", "FORMAT", "PARENT", "CREATED")]
    for entry in registry.entries():
        m = entry.manifest
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
        rows.append((m.name, m.kind, m.format, m.parent or "-", created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append(f"(no entries in {registry.root})")
    for name, problem in registry.problems().items():
        lines.append(f"invalid: {name}: {problem}")
    return "\n".join(lines)


def format_manifest(registry: Registry, name: str, *, deep: bool = False) -> str:
    """The entry's manifest as JSON (verified first; `deep` re-hashes every file)."""
    entry = registry.load(name, deep=deep)
    return json.dumps({"path": str(entry.path), **asdict(entry.manifest)}, indent=2, sort_keys=True)


def is_reranker(manifest: Manifest) -> bool:
    """A full checkpoint that can rerank Best-of-N candidates (RERANKER_KINDS)."""
    return manifest.kind in RERANKER_KINDS and manifest.format == "full"

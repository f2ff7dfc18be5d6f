"""One config -> command-line flags builder, for every `bonserve` command.

A command's options are declared once, as a dataclass (trainers, load tests: each field's
`metadata={"help": ...}`) or as pydantic settings (`serve`: each field's `description`).
`add_flags` turns every field into a flag whose help is that text, and `values_from` layers
the sources, later ones winning:

    field defaults < YAML recipe (`--config FILE`) < environment (settings with an env
    prefix only, e.g. BONSERVE_PORT) < flags given on the command line

Flags default to "not given" (argparse.SUPPRESS), which is what lets a recipe or an
environment variable survive when the flag is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message quotes it."""


@dataclass(frozen=True)
class Option:
    """One field of a config class, as a flag sees it."""

    name: str
    annotation: Any
    help: str
    default: Any  # dataclasses.MISSING when required

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def options(cls: type) -> Iterator[Option]:
    """The fields of a dataclass or a pydantic model, in declaration order."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            yield Option(f.name, hints[f.name], f.metadata.get("help", ""), default)
        return
    fields = getattr(cls, "model_fields", None)
    if fields is None:
        raise TypeError(f"{cls!r} is neither a dataclass nor a pydantic model")
    for name, info in fields.items():
        default = dataclasses.MISSING if info.is_required() else info.get_default(call_default_factory=True)
        yield Option(name, info.annotation, info.description or "", default)


def _base_type(annotation: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if args else str
    return annotation


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    env_prefix: str | None = None,
    recipe: bool = True,
) -> argparse.ArgumentParser:
    """One flag per field of `cls` (plus `--config FILE.yaml` when `recipe`)."""
    if recipe:
        parser.add_argument(
            "--config",
            dest="config",
            default=None,
            metavar="YAML",
            help="YAML recipe setting any of the options below by name; flags override it.",
        )
    for opt in options(cls):
        if opt.name in exclude:
            continue
        kind = _base_type(opt.annotation)
        text = opt.help.replace("%", "%%")  # argparse formats help with %
        text += " (required)" if opt.required else f" (default: {opt.default})"
        if env_prefix:
            text += f" [env {env_prefix}{opt.name.upper()}]"
        common: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is dict:  # e.g. goodput: ttft:MS e2el:MS
            parser.add_argument(opt.flag, nargs="+", metavar="KEY:VALUE", **common)
        elif kind in (int, float, str, Path):
            parser.add_argument(opt.flag, type=kind, **common)
        else:
            parser.add_argument(opt.flag, type=str, **common)
    return parser


def read_recipe(path: str | Path, names: set[str]) -> dict[str, Any]:
    """A YAML mapping of option: value (dashes or underscores); unknown keys are refused."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {str(path)!r}: cannot read the recipe ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {str(path)!r}: expected a mapping of option: value")
    loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(loaded) - names)
    if unknown:
        raise ConfigError(f"--config {str(path)!r}: unknown options {unknown}")
    return loaded


def values_from(
    cls: type,
    args: argparse.Namespace,
    *,
    recipe_values: dict[str, Any] | None = None,
    env_prefix: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments to build `cls` with: YAML recipe (`--config`, or `recipe_values`
    read by the caller) < environment < flags. With `env_prefix`, recipe keys whose variable
    is set are dropped, so the settings class reads the environment itself; missing required
    options are a ConfigError naming their flags."""
    opts = {o.name: o for o in options(cls)}
    values: dict[str, Any] = dict(recipe_values or {})
    path = getattr(args, "config", None)
    if path:
        values.update(read_recipe(path, set(opts)))
    if env_prefix:
        values = {k: v for k, v in values.items() if f"{env_prefix}{k.upper()}" not in os.environ}
    values.update({k: v for k, v in vars(args).items() if k in opts})
    missing = [o.flag for o in opts.values() if o.required and o.name not in values]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(missing)}")
    return values


def config_from_args(cls: type, args: argparse.Namespace, **layers: Any) -> Any:
    """`cls` built from `values_from(cls, args, **layers)`."""
    return cls(**values_from(cls, args, **layers))

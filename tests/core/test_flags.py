"""core/flags.py: one builder for dataclass configs and pydantic settings, and the order of
its sources (field defaults < YAML recipe < environment < flags)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.flags import ConfigError, add_flags, config_from_args
from server.config import Settings


@dataclass
class Recipe:
    """A stand-in config, named as such."""

    data: str = field(metadata={"help": "required input"})
    steps: int = field(default=3, metadata={"help": "how many"})
    fast: bool = field(default=False, metadata={"help": "a switch"})
    rate: float | None = field(default=None, metadata={"help": "optional"})


def parse(cls: type, argv: list[str], **kw: object) -> argparse.Namespace:
    return add_flags(argparse.ArgumentParser(), cls, **kw).parse_args(argv)  # type: ignore[arg-type]


def test_flags_override_the_recipe_which_overrides_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: from-yaml\nsteps: 7\nfast: true\n")
    cfg = config_from_args(Recipe, parse(Recipe, ["--config", str(recipe), "--steps", "9"]))
    assert (cfg.data, cfg.steps, cfg.fast, cfg.rate) == ("from-yaml", 9, True, None)
    cfg = config_from_args(Recipe, parse(Recipe, ["--data", "x", "--no-fast", "--rate", "0.5"]))
    assert (cfg.data, cfg.steps, cfg.fast, cfg.rate) == ("x", 3, False, 0.5)


def test_missing_and_unknown_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data"):
        config_from_args(Recipe, parse(Recipe, []))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nstepz: 1\n")
    with pytest.raises(ConfigError, match="unknown options \\['stepz'\\]"):
        config_from_args(Recipe, parse(Recipe, ["--config", str(bad)]))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_from_args(Recipe, parse(Recipe, ["--config", str(bad)]))


def test_settings_environment_beats_the_recipe_and_flags_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "serve.yaml"
    recipe.write_text("port: 7000\nmax_n: 5\n")
    monkeypatch.setenv("BONSERVE_PORT", "7100")
    from core.flags import values_from

    args = parse(Settings, ["--config", str(recipe)], env_prefix="BONSERVE_")
    s = Settings(**values_from(Settings, args, env_prefix="BONSERVE_"))
    assert (s.port, s.max_n) == (7100, 5)
    args = parse(Settings, ["--config", str(recipe), "--port", "7200"], env_prefix="BONSERVE_")
    s = Settings(**values_from(Settings, args, env_prefix="BONSERVE_"))
    assert s.port == 7200


def test_help_comes_from_the_field_docs() -> None:
    text = add_flags(argparse.ArgumentParser(), Recipe).format_help()
    text = " ".join(text.split())
    assert "how many (default: 3)" in text and "required input (required)" in text
    text = add_flags(argparse.ArgumentParser(), Settings, env_prefix="BONSERVE_").format_help()
    assert "[env BONSERVE_MAX_N]" in " ".join(text.split())

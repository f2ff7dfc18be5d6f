"""CLI flags are generated from Settings, so flag, env var and default stay one definition."""

from __future__ import annotations

import pytest

from bonserve.cli import make_parser, settings_from_args
from server.config import Settings


def test_every_setting_has_a_flag() -> None:
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONSERVE_MAX_N", "3")
    monkeypatch.setenv("BONSERVE_PORT", "9000")
    args = make_parser().parse_args(["serve", "--port", "1234", "--enforce-eager"])
    s = settings_from_args(args)
    assert (s.port, s.max_n, s.enforce_eager) == (1234, 3, True)


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="default_max_tokens"):
        Settings(default_max_tokens=100, max_tokens_limit=10)

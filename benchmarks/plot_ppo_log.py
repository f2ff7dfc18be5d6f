"""Proxy reward vs gold reward per PPO iteration, one panel per run (RUN.ppo_log.jsonl files).

    python benchmarks/plot_ppo_log.py --out proxy_vs_gold.png docs/benchmarks/ppo_rm_refresh/*.ppo_log.jsonl

Reward hacking shows as the proxy (`rewards/rm/mean`, left axis) rising while the gold reward
(`rewards/gold/mean`, right axis) does not; refreshes of the reward model are marked. A proxy
that is itself a probability of being right (a generative verifier's p(right)) shares the gold
reward's 0-1 scale, so both axes then run 0-1 and the two curves can be read against each other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.logs), figsize=(6 * len(args.logs), 4), squeeze=False)
    for ax, path in zip(axes[0], args.logs, strict=True):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r.get("rewards/rm/mean") for r in rows], "o-", color="tab:orange", label="proxy (RM)")
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("reward model score (raw)")
        gold = ax.twinx()
        gold.plot(steps, [r.get("rewards/gold/mean") for r in rows], "s-", color="tab:blue", label="gold")
        gold.set_ylim(0, 1)
        gold.set_ylabel("gold reward (rollouts)")
        proxy = [r["rewards/rm/mean"] for r in rows if r.get("rewards/rm/mean") is not None]
        if proxy and min(proxy) >= 0.0 and max(proxy) <= 1.0:
            ax.set_ylim(0, 1)
            ax.set_ylabel("learned reward (rollouts), 0-1 like the gold one")
        for r in rows:
            if "rm_refresh/pairs" in r or "rm_refresh/checks" in r:
                ax.axvline(r["step"], color="grey", alpha=0.3)
        ax.set_title(path.name.removesuffix(".ppo_log.jsonl"))
        lines = ax.get_legend_handles_labels()[0] + gold.get_legend_handles_labels()[0]
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Training rows for a generative verifier (training/verifier.py) from replies already drawn.

    .venv/bin/python benchmarks/verifier_data.py --out docs/benchmarks/verifier/train.jsonl \\
        --samples docs/benchmarks/bon_pays_ppo/prefs-train.jsonl.samples.jsonl \\
                  docs/benchmarks/bon_pays_t04/prefs-base-train.jsonl.samples.jsonl \\
        --pairs docs/benchmarks/bon_pays_transplant/transplant.jsonl --exclude-from 1000 --exclude-to 1300

Replies come from `bonserve data prefs` samples files (the PPO policy's and the base's) and
from preference-pair files (both sides); every distinct (prompt, reply) once, labelled by the
task's gold verifier. Train prompts in [--exclude-from, --exclude-to) are the validation
prompts the verifier is judged on and give no rows; held-out prompts are never read. Right
replies outnumber wrong ones about 4:1 in the PPO samples; --max-right-ratio caps them so the
verifier sees enough mistakes. Writes OUT and OUT.stats.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.tasks import get_task  # noqa: E402
from training.verifier import sft_rows  # noqa: E402


def index_of(example_id: str) -> int:
    return int(example_id.rsplit("-", 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument(
        "--samples", nargs="*", default=[], help="OUT.samples.jsonl files of `bonserve data prefs`."
    )
    ap.add_argument(
        "--pairs", nargs="*", default=[], help="Preference-pair JSONL files (chosen and rejected)."
    )
    ap.add_argument("--exclude-from", type=int, default=1000, help="First train index kept out (validation).")
    ap.add_argument("--exclude-to", type=int, default=1300, help="One past the last train index kept out.")
    ap.add_argument(
        "--max-right-ratio", type=float, default=2.0, help="At most this many right rows per wrong one."
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    task = get_task(args.task)
    examples = {e.id: e for e in task.examples("train")}
    seen: set[tuple[str, str]] = set()
    replies = []

    def add(example_id: str, reply: str) -> None:
        if not example_id.startswith(f"{task.name}-train-"):
            raise SystemExit(f"{example_id}: only train prompts may give verifier rows")
        if args.exclude_from <= index_of(example_id) < args.exclude_to or (example_id, reply) in seen:
            return
        seen.add((example_id, reply))
        replies.append((examples[example_id], reply))

    for path in args.samples:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            for text in row["samples"]:
                add(row["id"], text)
    for path in args.pairs:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            add(row["id"], row["chosen"][-1]["content"])
            add(row["id"], row["rejected"][-1]["content"])

    rows = sft_rows(task, replies)
    right = [r for r in rows if r["label"] == 1.0]
    wrong = [r for r in rows if r["label"] != 1.0]
    rng = random.Random(args.seed)
    rng.shuffle(right)
    kept = wrong + right[: int(args.max_right_ratio * len(wrong))]
    rng.shuffle(kept)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    stats = {
        "rows": len(kept),
        "right": sum(r["label"] == 1.0 for r in kept),
        "wrong": sum(r["label"] != 1.0 for r in kept),
        "right_dropped": len(right) - (len(kept) - len(wrong)),
        "prompts": len({r["id"] for r in kept}),
        "sources": {"samples": args.samples, "pairs": args.pairs},
        "excluded_train_indices": [args.exclude_from, args.exclude_to],
        "ends": dict(Counter(r["completion"][0]["content"].rsplit(" ", 1)[1] for r in kept)),
    }
    Path(f"{out}.stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

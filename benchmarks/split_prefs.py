"""Split the output of `bonserve data prefs` by prompt into a training part and a validation part.

    .venv/bin/python benchmarks/split_prefs.py --pairs OUT.jsonl --validation-prompts 300 \\
        --out-dir DIR

Reward-model recipes are compared on prompts none of them trained on, and not on the held-out
split that the final evaluation reports: the last `--validation-prompts` prompts of the
samples file (in the order they were sampled) are set aside. Writes DIR/train.jsonl and
DIR/val.jsonl (the pairs of each part) and DIR/val.samples.jsonl (the validation prompts'
samples with their gold scores, what benchmarks/rm_recipes.py reads), and prints the counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pairs", required=True, help="Pairs file of `bonserve data prefs` (OUT.samples.jsonl beside it)."
    )
    ap.add_argument("--validation-prompts", type=int, required=True, help="Prompts set aside, from the end.")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()

    pairs_path = Path(args.pairs)
    samples = [json.loads(line) for line in Path(f"{pairs_path}.samples.jsonl").read_text().splitlines()]
    if not 0 < args.validation_prompts < len(samples):
        raise SystemExit(f"--validation-prompts must be between 1 and {len(samples) - 1}")
    held = {row["id"] for row in samples[-args.validation_prompts :]}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}
    with open(out / "train.jsonl", "w") as train, open(out / "val.jsonl", "w") as val:
        for line in pairs_path.read_text().splitlines():
            part = "val" if json.loads(line)["id"] in held else "train"
            (val if part == "val" else train).write(line + "\n")
            counts[part] += 1
    with open(out / "val.samples.jsonl", "w") as f:
        for row in samples[-args.validation_prompts :]:
            f.write(json.dumps(row) + "\n")
    print(
        json.dumps(
            {
                "prompts": len(samples),
                "validation_prompts": len(held),
                "train_pairs": counts["train"],
                "val_pairs": counts["val"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""More reward-model pairs shaped like a policy's own mistakes, built from the task's labels.

    .venv/bin/python benchmarks/transplant_pairs.py \\
        --samples docs/benchmarks/bon_pays_ppo/prefs-train.jsonl.samples.jsonl \\
        --exclude docs/benchmarks/bon_pays_ppo/split/val.samples.jsonl \\
        --policy arith-ppo-merged --per-prompt 1 --out docs/benchmarks/bon_pays_transplant/transplant.jsonl

A tuned arithmetic policy is right most of the time, so sampling it yields under one
(right, wrong) pair per prompt, and its wrong replies look like its right ones
(`52 + 26 = 88` beside `52 + 26 = 78`). This script *transplants* the policy's own replies
onto other train prompts: every sampled reply whose numbers are exactly the prompt's two
operands followed by one result (`a + b = r`, `a + b equals r.`) becomes a template; a
right one is rewritten with the new prompt's operands and sum, a wrong one with the new
operands and the sum plus the same error (`r - (a + b)`: mostly a carry of ±10). So the
pairs keep the policy's reply forms and its error distribution, as counted on its samples,
and only the prompts are new. Every written pair is checked with the task's gold verifier.

Prompts: the task's train split, minus every id in `--exclude` (the validation prompts the
reward models are compared on), whose samples give no templates either; held-out prompts are
never read. Seeded; the row format is
`bonserve data prefs`'s, with `"transplanted": true`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from training.tasks import get_task

NUMBER = re.compile(r"\d+")


def read_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def template(text: str, a: int, b: int) -> tuple[str, int] | None:
    """`text` with its three numbers replaced by {a} {b} {r}, and its result r, if the
    numbers are exactly (a, b, r) in that order; otherwise None."""
    found = [int(n) for n in NUMBER.findall(text)]
    if len(found) != 3 or found[:2] != [a, b]:
        return None
    parts = NUMBER.split(text)
    return parts[0] + "{a}" + parts[1] + "{b}" + parts[2] + "{r}" + parts[3], found[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="The policy's OUT.samples.jsonl (`data prefs`).")
    ap.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose row ids get no pairs.")
    ap.add_argument("--policy", required=True, help="The policy the samples came from (each row's `policy`).")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--per-prompt", type=int, default=1, help="Pairs written per prompt.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    task = get_task(args.task)
    examples = {ex.id: ex for ex in task.examples("train")}
    excluded = {json.loads(line)["id"] for path in args.exclude for line in read_lines(path)}
    # Templates come only from prompts that are not excluded: validation replies stay unseen.
    sampled = [json.loads(line) for line in read_lines(args.samples)]
    sampled = [row for row in sampled if row["id"] not in excluded]
    right: list[str] = []
    wrong: list[tuple[str, int]] = []  # (template, error)
    for row in sampled:
        meta = examples[row["id"]].meta
        for text, gold in zip(row["samples"], row["gold"], strict=True):
            found = template(text, meta["a"], meta["b"])
            if found is None:
                continue
            form, result = found
            if gold == 1.0 and result == meta["answer"]:
                right.append(form)
            elif gold == 0.0 and result != meta["answer"]:
                wrong.append((form, result - meta["answer"]))

    rng = random.Random(args.seed)
    rows = []
    for ex in examples.values():
        if ex.id in excluded:
            continue
        a, b, answer = ex.meta["a"], ex.meta["b"], ex.meta["answer"]
        for _ in range(args.per_prompt):
            form, error = rng.choice(wrong)
            chosen = rng.choice(right).format(a=a, b=b, r=answer)
            rejected = form.format(a=a, b=b, r=answer + error)
            if answer + error < 0 or task.reward(ex, chosen) != 1.0 or task.reward(ex, rejected) != 0.0:
                continue
            rows.append(
                {
                    "prompt": task.messages(ex),
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                    "id": ex.id,
                    "chosen_score": 1.0,
                    "rejected_score": 0.0,
                    "policy": args.policy,
                    "transplanted": True,
                }
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    errors = Counter(error for _, error in wrong)
    print(
        json.dumps(
            {
                "right_templates": len(right),
                "wrong_templates": len(wrong),
                "top_errors": errors.most_common(6),
                "prompts": len(examples) - len(excluded & examples.keys()),
                "pairs": len(rows),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

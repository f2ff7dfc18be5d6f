"""The KV-cache block size on CPU, measured: Best-of-N latency and engine work per block size.

    .venv/bin/python benchmarks/kv_block_size.py --reward-model rm-base-t04-epoch \\
        --block-sizes 128 32 --rows full-8 "hold-8 @12 margin 0" --prompts 60 --rounds 2 \\
        --out docs/benchmarks/kv_block_size

vLLM's CPU backend uses 128-token KV blocks unless told otherwise, and prefix caching reuses
only whole blocks. A Best-of-N request's prompt (chat template and question, about 45 tokens
here) never fills one, so nothing is reused: each of the 8 candidates prefills the prompt
again in the policy engine, a resumed candidate ("hold" pruning) prefills its prompt and its
tokens so far, and the reward engine reads the prompt again for every candidate it scores.

For each block size (passed to both engines through `--engine-args`), in interleaved rounds so
the configurations share the machine's drift: one bonserve on 127.0.0.1 with the policy and
the reward model, the same held-out prompts and seeds in each row (benchmarks/bon_pruning.py
rows), then each engine's prompt tokens and prefix-cache hits read from /metrics. Prints and
writes per configuration and row: gold quality, decoded tokens, p50/p99 latency, throughput,
and the ratio of p50 and throughput to the first block size (medians over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bon_pruning import ROWS, run_row, summarise  # noqa: E402
from loadtests.servers import start_bonserve  # noqa: E402
from training.tasks import get_task  # noqa: E402

COUNTERS = ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total", "vllm:generation_tokens_total")


def engine_counters(base_url: str) -> dict[str, dict[str, float]]:
    """COUNTERS per engine (vLLM's `model_name` label) from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    text = httpx.get(base_url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in COUNTERS:
                engine = s.labels.get("model_name", "?")
                out.setdefault(engine, {})[s.name.removeprefix("vllm:")] = s.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="smollm2-135m-instruct")
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--rows", nargs="+", default=["full-8"], choices=list(ROWS))
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-time-s", type=float, default=900, help="Per row: no new requests after.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    examples = get_task("arithmetic").examples("heldout", args.prompts)
    work = Path(tempfile.mkdtemp(prefix="bench-kv-block-"))
    flags = ["--model", args.policy, "--reward-model", args.reward_model, "--enforce-eager"]
    flags += ["--reward-models", f"{args.policy}={args.reward_model}"]
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for block in args.block_sizes:
            engine_args = json.dumps({"block_size": block})
            server = start_bonserve(work, *flags, "--engine-args", engine_args)
            try:
                asyncio.run(run_row(server.base_url, args.policy, examples[:2], {"best_of": 2}, args))
                for name in args.rows:
                    before = engine_counters(server.base_url)
                    t0 = time.perf_counter()
                    rows = asyncio.run(run_row(server.base_url, args.policy, examples, ROWS[name], args))
                    wall = time.perf_counter() - t0
                    after = engine_counters(server.base_url)
                    work_done = {
                        engine: {
                            k: after[engine][k] - before.get(engine, {}).get(k, 0.0) for k in after[engine]
                        }
                        for engine in after
                    }
                    s = summarise(rows)
                    runs.append(
                        {
                            "round": rnd,
                            "block_size": block,
                            "row": name,
                            "summary": s,
                            "requests_per_s": len(rows) / wall,
                            "engines": work_done,
                            "requests": rows,
                        }
                    )
                    print(
                        f"round {rnd} block {block:>3} {name:<24} gold {s['gold']:.3f}  p50 "
                        f"{s['latency_p50_s']:.2f}s  p99 {s['latency_p99_s']:.2f}s  "
                        f"{len(rows) / wall:.3f} req/s  engines {json.dumps(work_done)}",
                        flush=True,
                    )
            finally:
                server.stop()

    table = []
    first = args.block_sizes[0]
    for name in args.rows:
        med = {}
        for block in args.block_sizes:
            mine = [r for r in runs if r["row"] == name and r["block_size"] == block]
            med[block] = {
                "p50_s": statistics.median(r["summary"]["latency_p50_s"] for r in mine),
                "p99_s": statistics.median(r["summary"]["latency_p99_s"] for r in mine),
                "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
                "gold": statistics.fmean(r["summary"]["gold"] for r in mine),
                "decoded_tokens": statistics.fmean(r["summary"]["decoded_tokens"] for r in mine),
            }
        for block in args.block_sizes:
            m = med[block]
            table.append(
                {
                    "row": name,
                    "block_size": block,
                    **m,
                    "p50_vs_first": m["p50_s"] / med[first]["p50_s"],
                    "throughput_vs_first": m["requests_per_s"] / med[first]["requests_per_s"],
                }
            )
    lines = [
        "| row | block size | gold | decoded tok/req | p50 s | p99 s | req/s | p50 vs "
        f"{first} | req/s vs {first} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        lines.append(
            f"| {t['row']} | {t['block_size']} | {t['gold']:.3f} | {t['decoded_tokens']:.0f} "
            f"| {t['p50_s']:.2f} | {t['p99_s']:.2f} | {t['requests_per_s']:.3f} | {t['p50_vs_first']:.2f} "
            f"| {t['throughput_vs_first']:.2f} |"
        )
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/kv_block_size.py " + " ".join(sys.argv[1:])
        report = {"command": command, "config": {k: str(v) for k, v in vars(args).items()}, "table": table}
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        with (args.out / "runs.jsonl").open("w") as f:
            for r in runs:
                f.write(json.dumps(r) + "\n")
        (args.out / "report.md").write_text(f"`{command}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

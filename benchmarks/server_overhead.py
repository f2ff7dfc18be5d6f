"""bonserve (n=1) against vLLM's own OpenAI server: same engine config, same prompts, one run.

    python benchmarks/server_overhead.py --requests 32 --rounds 3 --out docs/benchmarks/server_overhead.json

Both servers run at once (idle while the other is measured); each round measures every
concurrency level on A then B, alternating the order, so machine drift hits both alike.
Greedy decoding makes both servers generate identical tokens. Prints per-level medians over
rounds and the ratios bonserve/vLLM (throughput: want >= 0.95; p50 latency: want <= 1.05).

    python benchmarks/server_overhead.py --vllm-defaults --concurrency 1 4 --rounds 3 \
        --out docs/benchmarks/server_overhead_defaults.json

`--vllm-defaults` compares what a user gets out of the box instead: bonserve with its defaults
against `vllm serve MODEL` with vLLM's (no dtype, KV cache, compile or chunked-prefill flags;
only `--gpu-memory-utilization 0.4`: with its default, 0.92 of RAM, vLLM's CPU backend refuses
to start while another server holds memory).
The two then decode in different dtypes, so every request asks for exactly `--max-tokens`
tokens (`ignore_eos`) and throughput is compared in output tokens per second.

    python benchmarks/server_overhead.py --vs-bonserve-env VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
        --concurrency 1 4 --rounds 3 --out docs/benchmarks/server_threads.json

`--vs-bonserve-env` makes the reference a second bonserve with the same flags and these
environment variables (an engine setting tried in the whole server, front end included);
the ratios are then default / variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from openai import AsyncOpenAI

from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.closed_loop import closed_loop
from loadtests.servers import start_bonserve, start_vllm, start_vllm_defaults

PROMPTS = [
    f"What is {a} + {b}? Reply with just the number."
    for a, b in [(12, 35), (47, 18), (63, 29), (81, 14), (25, 56), (38, 44), (72, 19), (90, 7)]
] + [
    "Name three colours.",
    "What is the capital of Italy?",
    "Write a haiku about rain.",
    "Give one tip for writing clean code.",
    "What does a reward model do?",
    "Explain what a GPU is in one sentence.",
    "List two prime numbers.",
    "Say hello in French.",
]


async def run_level(
    base_url: str, model: str, concurrency: int, n_requests: int, max_tokens: int, fixed_length: bool = False
) -> dict[str, float]:
    extra = {"ignore_eos": True, "min_tokens": max_tokens} if fixed_length else None
    async with AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300) as client:

        async def call(i: int) -> int:
            r = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens,
                temperature=0,
                extra_body=extra,
            )
            assert r.usage is not None
            if fixed_length and r.usage.completion_tokens != max_tokens:
                raise RuntimeError(f"{base_url}: {r.usage.completion_tokens} tokens, asked for {max_tokens}")
            return r.usage.completion_tokens

        return await closed_loop(call, n_requests, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=32, help="requests per level (at least 6 per concurrent client)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--bonserve-flags", default="", help="extra flags for bonserve serve")
    parser.add_argument(
        "--vllm-defaults",
        action="store_true",
        help="vLLM's server with its own defaults (what a user would run instead), fixed output lengths",
    )
    parser.add_argument(
        "--vs-bonserve-env",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="reference: bonserve with the same flags and these environment variables",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    entry = Registry().load(DEFAULT_MODEL_NAME)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    flags = args.bonserve_flags.split()
    if args.vs_bonserve_env:
        env = dict(item.split("=", 1) for item in args.vs_bonserve_env)
        ref = start_bonserve(log_dir, *flags, env=env)
    elif args.vllm_defaults:
        ref = start_vllm_defaults(log_dir, entry.path, DEFAULT_MODEL_NAME)
    else:
        ref = start_vllm(log_dir, entry.path, DEFAULT_MODEL_NAME)
    servers = {"bonserve": start_bonserve(log_dir, *flags), "vllm": ref}  # "vllm": the reference
    fixed = args.vllm_defaults or bool(args.vs_bonserve_env)
    results: dict[str, dict[int, list[dict[str, float]]]] = {k: {} for k in servers}
    try:
        for s in servers.values():
            s.wait_ready()
        for s in servers.values():  # warm-up: first requests pay one-off costs
            asyncio.run(run_level(s.base_url, DEFAULT_MODEL_NAME, 4, 8, args.max_tokens, fixed))
        for rnd in range(args.rounds):
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            for c in args.concurrency:
                for name in order:
                    r = asyncio.run(
                        run_level(
                            servers[name].base_url,
                            DEFAULT_MODEL_NAME,
                            c,
                            max(args.requests, 6 * c),
                            args.max_tokens,
                            fixed,
                        )
                    )
                    results[name].setdefault(c, []).append(r)
                    print(
                        f"round {rnd} c={c:<3} {name:<9} {r['req_per_s']:.2f} req/s "
                        f"{r['tok_per_s']:.1f} tok/s "
                        f"p50 {r['p50']:.3f}s p99 {r['p99']:.3f}s",
                        flush=True,
                    )
    finally:
        for s in servers.values():
            s.stop()

    report = {"config": vars(args) | {"out": str(args.out)}, "levels": {}}
    print(f"\n{'conc':>4} {'metric':<10} {'bonserve':>10} {'vllm':>10} {'ratio':>7}")
    for c in args.concurrency:
        level = {}
        for metric in ("req_per_s", "tok_per_s", "p50", "p99"):
            ours = statistics.median(r[metric] for r in results["bonserve"][c])
            ref = statistics.median(r[metric] for r in results["vllm"][c])
            # Ratio per round, then the median: robust to drift across rounds.
            ratios = [
                a[metric] / b[metric] for a, b in zip(results["bonserve"][c], results["vllm"][c], strict=True)
            ]
            level[metric] = {"bonserve": ours, "vllm": ref, "ratio": statistics.median(ratios)}
            print(f"{c:>4} {metric:<10} {ours:>10.3f} {ref:>10.3f} {statistics.median(ratios):>7.3f}")
        report["levels"][c] = level
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Best-of-N cost: bonserve `best_of=8` against what a user would run without it. One run.

    python benchmarks/bon_overhead.py --requests 32 --rounds 2 --out docs/benchmarks/bon_overhead.json

Systems, same prompts, same sampling (T=0.8, max_tokens 64, concurrency 4):
  bonserve   one process, policy + co-located reward engine, `best_of=8, n=1`
  vllm_n8    (a) vLLM's own server generating n=8, no scoring (the floor)
  pipeline   (b) vLLM server n=8, then the 8 candidates scored over HTTP by a second vLLM
             server (pooling runner, `/classify`) and the best picked in the client. Its
             reward server gets the same thread placement bonserve uses for its reward engine
             (unbound, 1 OpenMP thread): the strongest version of the baseline.
Targets: bonserve p50 <= 1.15x (a), and faster than (b). Prints medians over rounds and the
ratios per round's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from transformers import AutoTokenizer

from core.chat import reward_ids
from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.closed_loop import closed_loop
from loadtests.servers import ServerProcess, start_bonserve, start_vllm
from training.reward import init_reward_model

RM_NAME = "rm-bench-init"
PROMPTS = [
    f"What is {a} + {b}? Reply with just the number."
    for a, b in [(12, 35), (47, 18), (63, 29), (81, 14), (25, 56), (38, 44), (72, 19), (90, 7)]
]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


async def run_system(
    name: str, servers: dict[str, ServerProcess], tokenizer: Any, args: Any, seed_base: int
) -> dict[str, float]:
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    async with (
        AsyncOpenAI(
            base_url=(servers["bonserve"] if name == "bonserve" else servers["vllm"]).v1,
            api_key="unused",
            max_retries=0,
            timeout=600,
        ) as client,
        httpx.AsyncClient(timeout=600) as http,
    ):

        async def call(i: int) -> int:
            seed = seed_base + i
            if name == "bonserve":
                r = await client.chat.completions.create(
                    model=DEFAULT_MODEL_NAME,
                    messages=messages(i),
                    n=1,
                    seed=seed,
                    extra_body={"best_of": args.best_of},
                    **sampling,
                )
                return r.usage.model_extra["bonserve"]["delivered_tokens"]
            r = await client.chat.completions.create(
                model=DEFAULT_MODEL_NAME, messages=messages(i), n=args.best_of, seed=seed, **sampling
            )
            if name == "vllm_n8":
                return r.usage.completion_tokens // args.best_of
            texts = [
                tokenizer.decode(reward_ids(tokenizer, messages(i), c.message.content)) for c in r.choices
            ]
            scored = await http.post(
                servers["reward"].base_url + "/classify",
                json={"model": RM_NAME, "input": texts, "use_activation": False},
            )
            scored.raise_for_status()
            data = scored.json()["data"]
            best = max(range(len(data)), key=lambda k: data[k]["probs"][0])
            return len(tokenizer.encode(r.choices[best].message.content))

        return await closed_loop(call, args.requests, args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--best-of", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    base = Registry().load(DEFAULT_MODEL_NAME)
    work = Path(tempfile.mkdtemp(prefix="bench-bon-"))
    registry = Registry(work / "registry")
    rm_path = init_reward_model(Registry(), DEFAULT_MODEL_NAME, RM_NAME, out=registry)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    servers: dict[str, ServerProcess] = {}
    systems = ["bonserve", "vllm_n8", "pipeline"]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    try:
        servers["bonserve"] = start_bonserve(
            work,
            "--model",
            str(base.path),
            "--served-model-name",
            DEFAULT_MODEL_NAME,
            "--registry",
            str(registry.root),
            "--reward-model",
            RM_NAME,
        )
        servers["vllm"] = start_vllm(work, base.path, DEFAULT_MODEL_NAME)
        servers["reward"] = start_vllm(
            work,
            rm_path,
            RM_NAME,
            name="vllm-reward",
            extra=["--runner", "pooling"],
            env={"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"},
        )
        for s in servers.values():
            s.wait_ready()
        for name in systems:  # warm-up
            asyncio.run(run_system(name, servers, tokenizer, args, 10_000))
        for rnd in range(args.rounds):
            order = systems if rnd % 2 == 0 else list(reversed(systems))
            for name in order:
                r = asyncio.run(run_system(name, servers, tokenizer, args, rnd * 1000))
                results[name].append(r)
                print(
                    f"round {rnd} {name:<9} {r['req_per_s']:.2f} req/s p50 {r['p50']:.3f}s "
                    f"p99 {r['p99']:.3f}s",
                    flush=True,
                )
    finally:
        for s in servers.values():
            s.stop()

    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "systems": {}}
    for name in systems:
        report["systems"][name] = {
            m: statistics.median(r[m] for r in results[name]) for m in ("req_per_s", "p50", "p99")
        }
    for ref in ("vllm_n8", "pipeline"):
        ratios = [a["p50"] / b["p50"] for a, b in zip(results["bonserve"], results[ref], strict=True)]
        report[f"p50_ratio_vs_{ref}"] = statistics.median(ratios)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

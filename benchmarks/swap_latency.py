"""Hot-swap cost: time from promote to the first token of the new checkpoint, and the latency
of in-flight traffic during the swap (p99 during vs before), for a LoRA adapter and for full
weights (a new engine), then for a second full checkpoint of the same layout (loaded into
that engine in place). One run: a server with today's defaults, then one with
--standby-engine (a spare engine on the start-up weights takes the first full promotion).

    python benchmarks/swap_latency.py --out docs/benchmarks/swap_latency.json

A closed loop of `--concurrency` clients keeps sending chat requests to the alias `policy`
the whole time. Then: `--quiet-s` seconds of load (the "before" window), promote
`policy` -> LoRA adapter (random weights, rank 8), wait `--quiet-s`, promote -> a full
checkpoint (a new engine is started, warmed, switched to, and the old target drained), wait
`--quiet-s`, promote -> a second full checkpoint (the alias switches at once; its requests
wait while the first drains and the weights load into its engine). With --standby-engine the
load starts once the spare engine is up, and the first full promotion loads into the spare
(a new spare then starts in the background, during the last window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.servers import start_bonserve
from loadtests.stats import summarize

PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


async def wait_for_standby(base_url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=30) as c:
        while (await c.get(base_url + "/ready")).json()["standby_engine"]["state"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the standby engine did not start")
            await asyncio.sleep(1)


async def main_async(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    v1 = base_url + "/v1"
    samples: list[tuple[float, float, str]] = []  # (start, latency, model)
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = await c.post(
                v1 + "/chat/completions",
                json={"model": "policy", "messages": PROMPT, "max_tokens": args.max_tokens},
            )
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text[:200]}")
                continue
            samples.append((t0, time.perf_counter() - t0, r.json()["model"]))

    async def promote(c: httpx.AsyncClient, target: str) -> dict[str, float]:
        t0 = time.perf_counter()
        r = await c.post(
            base_url + "/admin/aliases/promote", json={"alias": "policy", "model": target}, timeout=900
        )
        r.raise_for_status()
        method = r.json()["method"]
        switched = time.perf_counter()
        async with c.stream(
            "POST",
            v1 + "/chat/completions",
            json={"model": "policy", "messages": PROMPT, "max_tokens": 4, "stream": True},
        ) as s:
            async for line in s.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    assert f'"model":"{target}"' in line, line
                    break
        first = time.perf_counter()
        return {
            "start": t0,
            "switched": switched,
            "end": first,
            "promote_s": switched - t0,
            "promote_to_first_token_s": first - t0,
            "method": method,
        }

    async with httpx.AsyncClient(timeout=900) as c:
        clients = [asyncio.create_task(client(c)) for _ in range(args.concurrency)]
        await asyncio.sleep(args.quiet_s)
        before_end = time.perf_counter()
        lora = await promote(c, "bench-lora")
        await asyncio.sleep(args.quiet_s)
        full = await promote(c, "bench-full")
        await asyncio.sleep(args.quiet_s)
        in_place = await promote(c, "bench-full-2")
        await asyncio.sleep(args.quiet_s / 2)
        stop.set()
        await asyncio.gather(*clients)

    def window(lo: float, hi: float) -> list[float]:
        """Latencies of requests in flight at any moment of [lo, hi]."""
        return [lat for t0, lat, _ in samples if t0 <= hi and t0 + lat >= lo]

    before = [lat for t0, lat, _ in samples if t0 + lat <= before_end]
    report: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "failed_requests": len(failures),
        "failures": failures[:5],
        "before": summarize(before) | {"n": len(before)},
    }
    for name, swap in (("lora", lora), ("full", full), ("full_in_place", in_place)):
        during = window(swap["start"], swap["end"])
        report[name] = {
            "method": swap["method"],
            "promote_s": swap["promote_s"],
            "promote_to_first_token_s": swap["promote_to_first_token_s"],
            "during": summarize(during) | {"n": len(during)},
            "p99_ratio_during_vs_before": summarize(during)["p99"] / summarize(before)["p99"],
            "p50_ratio_during_vs_before": summarize(during)["p50"] / summarize(before)["p50"],
        }
    report["models_seen"] = {
        m: sum(1 for *_, x in samples if x == m) for m in sorted({x for *_, x in samples})
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quiet-s", type=float, default=30.0)
    parser.add_argument("--modes", nargs="+", choices=("default", "standby"), default=["default", "standby"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed
    from tests.synthetic import copy_full_entry, make_lora_entry

    report: dict[str, Any] = {}
    for mode in args.modes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-swap-{mode}-"))
        registry = Registry(work / "registry")
        base = Registry().load(DEFAULT_MODEL_NAME)
        copy_full_entry(registry, base, DEFAULT_MODEL_NAME, kind="base")
        base = registry.load(DEFAULT_MODEL_NAME)
        make_lora_entry(registry, base, "bench-lora", rank=8, seed=1)
        copy_full_entry(registry, base, "bench-full")
        copy_full_entry(registry, base, "bench-full-2")  # same layout as bench-full: loaded in place
        server = start_bonserve(
            work,
            "--registry",
            str(registry.root),
            "--model",
            DEFAULT_MODEL_NAME,
            "--alias",
            "policy",
            "--max-loras",
            "2",
            "--open-admin",  # loopback only; the benchmark drives promotions itself
            *(["--standby-engine"] if mode == "standby" else []),
        )
        try:
            if mode == "standby":
                asyncio.run(wait_for_standby(server.base_url))
            report[mode] = asyncio.run(main_async(args, server.base_url))
        finally:
            server.stop()
    if {"default", "standby"} <= set(report):
        first = {m: report[m]["full"]["promote_to_first_token_s"] for m in ("default", "standby")}
        report["first_full_promotion_standby_vs_default"] = first["standby"] / first["default"]
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

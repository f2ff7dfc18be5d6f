"""A tuned policy served three ways, in one run: the base, the same rank-16 LoRA adapter
served through vLLM's LoRA path, and that adapter merged into full weights.

    .venv/bin/python benchmarks/merged_speed.py --rounds 3 --out docs/benchmarks/merged_speed.json

The adapter is what the trainers write (rank 16 on every linear layer of the transformer)
with random weights: decode speed depends on its shape, not on what it learned. Two servers
run (eager, float32): A serves the base and the merged entry (two plain engines), B the base
with LoRA enabled (max_lora_rank 16, the fastest cap for a rank-16 adapter) and the adapter
loaded. Each round streams the same chat prompts at 4 in flight to base, lora and merged,
in an order that alternates between rounds, and measures TPOT (time per output token after
the first) per request from the stream. Prints per-policy medians and their ratios to the
base. The target: merged TPOT <= 1.1x the base's.
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

from core.registry import DEFAULT_MODEL_NAME, Manifest, Registry  # noqa: E402
from loadtests.servers import start_bonserve  # noqa: E402
from training.merge import merge_entry  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain in detail how a bicycle works.",
    "Describe a busy market in the morning, with its sounds and smells.",
    "Tell me about the history of maps and how they changed travel.",
]
LORA, MERGED = "bench-lora-r16", "bench-lora-r16-merged"


def make_adapter(registry: Registry) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = registry.path_of(DEFAULT_MODEL_NAME)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # small B: a realistic adapter, text stays text
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)
    manifest = Manifest(name=LORA, kind="sft", format="lora", base_model=DEFAULT_MODEL_NAME)
    with registry.write(manifest) as staging:
        peft_model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)


async def measure(base_url: str, model: str, n: int, concurrency: int, max_tokens: int) -> list[float]:
    """TPOT (s/token) of each of `n` streamed requests."""
    sem = asyncio.Semaphore(concurrency)
    tpots: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with sem:
            first = None
            tokens = 0
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    elif first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                        first = time.perf_counter()
            end = time.perf_counter()
            if first is not None and tokens > 1:
                tpots.append((end - first) / (tokens - 1))

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    return tpots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="Requests per policy per round.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-merged-"))
    registry = Registry(work / "registry")
    base_dir = registry.path_of(DEFAULT_MODEL_NAME)
    base_dir.mkdir(parents=True)
    for path in Registry().path_of(DEFAULT_MODEL_NAME).iterdir():
        (base_dir / path.name).symlink_to(path)
    make_adapter(registry)
    merge_entry(registry, LORA)
    common = [
        "--registry",
        str(registry.root),
        "--model",
        DEFAULT_MODEL_NAME,
        "--enforce-eager",
        "--open-admin",
    ]
    a = start_bonserve(work, *common)
    b = start_bonserve(work, *common, "--max-loras", "1", "--max-lora-rank", "16")
    targets: dict[str, tuple[str, str]] = {
        "base": (a.base_url, DEFAULT_MODEL_NAME),
        "merged": (a.base_url, MERGED),
        "lora": (b.base_url, LORA),
    }
    raw: dict[str, list[float]] = {k: [] for k in targets}
    try:
        for server, name in ((a, MERGED), (b, LORA)):
            r = httpx.post(f"{server.base_url}/admin/models/load", json={"model": name}, timeout=900)
            r.raise_for_status()
        for url, model in targets.values():  # warm-up
            asyncio.run(measure(url, model, 4, args.concurrency, 8))
        for rnd in range(args.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
            for name in order:
                url, model = targets[name]
                tpots = asyncio.run(measure(url, model, args.requests, args.concurrency, args.max_tokens))
                raw[name].extend(tpots)
                print(f"round {rnd} {name:<7} TPOT p50 {statistics.median(tpots) * 1000:.1f} ms", flush=True)
    finally:
        a.stop()
        b.stop()

    medians = {k: statistics.median(v) for k, v in raw.items()}
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python benchmarks/merged_speed.py " + " ".join(sys.argv[1:]),
        "tpot_ms_p50": {k: round(v * 1000, 2) for k, v in medians.items()},
        "tpot_ratio_to_base": {k: round(v / medians["base"], 3) for k, v in medians.items()},
        "samples": {k: len(v) for k, v in raw.items()},
        "raw_tpot_s": raw,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "raw_tpot_s"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

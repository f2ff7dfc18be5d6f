"""Engine settings by measurement: start time and decode speed of the policy engine under
each setting a CPU deployment can choose, in one run, interleaved, so they share the noise.

    .venv/bin/python benchmarks/engine_settings.py --repeats 2 --max-time-s 2400 \\
        --out docs/benchmarks/engine_settings.jsonl

Each measurement is a fresh process (engine start included) on the bundled model, float32
unless stated: init time (LLM() until it returns), then greedy decoding of 64 tokens per
sequence with ignore_eos at batch 1 (3 prompts one after another) and at batch 8. The
configurations (name: what differs from `eager`):

    eager            enforce_eager, vLLM's default thread placement (1 OpenMP thread on a
                     2-core box: vLLM reserves one core for its scheduler process)
    eager-2threads   VLLM_CPU_NUM_OF_RESERVED_CPU=0: the worker's OpenMP threads on every core
    eager-bf16       dtype bfloat16 (vLLM's own CPU default)
    eager-preload    LD_PRELOAD of tcmalloc + Intel OpenMP (what vLLM's CPU worker asks for)
    compiled-cold    torch.compile (bonserve's former default) with an empty compile cache
    compiled-bf16-cold  torch.compile and bfloat16: vLLM's own CPU defaults for this model
    compiled-warm    torch.compile, second start on the same cache (what a restart sees)
    compiled-noaot-warm  the same with VLLM_USE_AOT_COMPILE=0 (vLLM's older inductor cache)

The table gives medians over repeats and each figure's ratio to `eager`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe a busy market in the morning.",
    "What makes a good cup of tea?",
    "Tell me about the history of maps.",
    "Why do leaves change colour in autumn?",
    "How do bees make honey?",
]
NEW_TOKENS = 64


def _preload() -> str:
    libs = []
    for candidate in (
        Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
        Path(sys.prefix) / "lib" / "libiomp5.so",
    ):
        if candidate.exists():
            libs.append(str(candidate))
    return ":".join(libs)


def configs(cache_root: Path) -> dict[str, dict[str, Any]]:
    warm = cache_root / "warm"
    noaot = cache_root / "noaot"
    return {
        "eager": {"eager": True, "env": {}},
        "eager-2threads": {"eager": True, "env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}},
        "eager-bf16": {"eager": True, "dtype": "bfloat16", "env": {}},
        "eager-preload": {"eager": True, "env": {"LD_PRELOAD": _preload()}},
        "compiled-cold": {"eager": False, "env": {}, "fresh_cache": True},
        # vLLM's own CPU defaults for this model: bfloat16 and torch.compile
        "compiled-bf16-cold": {"eager": False, "dtype": "bfloat16", "env": {}, "fresh_cache": True},
        "compiled-warm": {"eager": False, "env": {"VLLM_CACHE_ROOT": str(warm)}, "prime": True},
        "compiled-noaot-warm": {
            "eager": False,
            "env": {"VLLM_CACHE_ROOT": str(noaot), "VLLM_USE_AOT_COMPILE": "0"},
            "prime": True,
        },
    }


# --------------------------------------------------------------------------- child


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine start and the decode measurements (runs in its own process)."""
    from vllm import LLM, SamplingParams

    from core.engine_args import EngineOptions, offline, policy_engine_kwargs
    from core.registry import DEFAULT_MODEL_NAME, Registry

    path = Registry().load(DEFAULT_MODEL_NAME).path
    opts = EngineOptions(enforce_eager=spec["eager"], dtype=spec.get("dtype", "float32"))
    t0 = time.perf_counter()
    llm = LLM(**offline(policy_engine_kwargs(opts, path)))
    init_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    llm.generate(PROMPTS[:1], params, use_tqdm=False)  # warm-up

    t0 = time.perf_counter()
    for prompt in PROMPTS[:3]:
        llm.generate([prompt], params, use_tqdm=False)
    batch1 = 3 * NEW_TOKENS / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    batch8 = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)
    return {"init_s": init_s, "tok_s_batch1": batch1, "tok_s_batch8": batch8}


# --------------------------------------------------------------------------- parent


def run_one(name: str, spec: dict[str, Any], cache_root: Path, timeout: float) -> dict[str, Any]:
    env = {**os.environ, **spec["env"]}
    if spec.get("fresh_cache"):
        env["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="cold-", dir=cache_root)
    if not env.get("LD_PRELOAD"):
        env.pop("LD_PRELOAD", None)
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        return {"config": name, "ok": False, "wall_s": wall, "error": f"timeout {timeout}s"}
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"config": name, "ok": False, "wall_s": wall, "error": tail}
    return {"config": name, "ok": True, "wall_s": wall, **json.loads(lines[-1][len("RESULT ") :])}


def table(rows: list[dict[str, Any]], names: list[str]) -> str:
    ok = [r for r in rows if r["ok"]]

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in ok if r["config"] == name]
        return statistics.median(values) if values else None

    base = {k: median("eager", k) for k in ("init_s", "tok_s_batch1", "tok_s_batch8")}
    out = [
        "| config | runs | init s (x eager) | tok/s batch 1 (x eager) | tok/s batch 8 (x eager) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        cells = []
        for key in ("init_s", "tok_s_batch1", "tok_s_batch8"):
            value, ref = median(name, key), base[key]
            if value is None:
                cells.append("failed")
            else:
                ratio = f" ({value / ref:.2f}x)" if ref else ""
                cells.append(f"{value:.1f}{ratio}")
        runs = sum(1 for r in ok if r["config"] == name)
        out.append(f"| {name} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="Comma-separated config names.")
    parser.add_argument("--max-time-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=None, help="JSONL of every measurement.")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    cache_root = Path(tempfile.mkdtemp(prefix="bonserve-engine-settings-"))
    specs = configs(cache_root)
    names = args.only.split(",") if args.only else list(specs)
    deadline = time.monotonic() + args.max_time_s
    rows: list[dict[str, Any]] = []
    for name in names:  # a compile whose cache the warm configurations then load
        if specs[name].get("prime"):
            print(f"[prime] {name}", flush=True)
            run_one(name, specs[name], cache_root, timeout=900)
    for rep in range(args.repeats):  # interleaved: A B C ... A B C
        for name in names:
            if time.monotonic() > deadline:
                print("[budget] --max-time-s reached", flush=True)
                break
            row = run_one(name, specs[name], cache_root, timeout=900)
            row["repeat"] = rep
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

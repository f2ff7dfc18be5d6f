"""Server start time, cold and warm: `bonserve serve` to `/ready` and to its first answer, for
the policy alone and for policy + reward model.

    .venv/bin/python benchmarks/start_time.py --repeats 2 --out docs/benchmarks/start_time.json

Cold: the OS page cache is dropped first (`/proc/sys/vm/drop_caches`, when this process may
write it; the JSON says whether it could) and the server gets an empty vLLM cache directory
(`VLLM_CACHE_ROOT`), as a pod does on a node that never ran it. Warm: the same server started
again right after, on the same cache directory - a pod restart on the same node. Each
scenario runs cold then warm, `--repeats` times, in an order that rotates between repeats;
the table gives medians. `--compiled` adds the policy with torch.compile on (the GPU default)
to show whether the compile cache is reused on a warm start.

The reward model is an untrained score head on the base (`bonserve models init-reward`):
start time depends on the checkpoint's size, not on what it learned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.registry import DEFAULT_MODEL_NAME, Registry  # noqa: E402
from loadtests.servers import ServerProcess, free_port, spawn  # noqa: E402
from training.reward import init_reward_model  # noqa: E402

RM_NAME = "bench-start-rm"
SCENARIOS: dict[str, list[str]] = {
    "policy": [],
    "policy+rm": ["--reward-model", RM_NAME],
}
COMPILED = {"policy (compiled)": ["--no-enforce-eager"]}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def wait_for(server: ServerProcess, path: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early; log tail:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(server.base_url + path, timeout=5).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{path} not 200 after {timeout_s}s")


def one_start(
    flags: list[str], model: Path, registry: Path, cache: Path, log_dir: Path, timeout_s: float
) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "bonserve.cli", "serve", "--port", str(port), "--registry", str(registry)]
    cmd += ["--model", str(model), "--reconcile-interval-s", "0", *flags]
    t0 = time.monotonic()
    server = spawn("bonserve", cmd, log_dir, port, "/ready", {"VLLM_CACHE_ROOT": str(cache)})
    try:
        health = wait_for(server, "/health", timeout_s)
        ready = wait_for(server, "/ready", timeout_s)
        reply = httpx.post(
            server.v1 + "/chat/completions",
            json={
                "model": DEFAULT_MODEL_NAME,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=120,
        )
        answered = time.monotonic()
        reply.raise_for_status()
    finally:
        server.stop()
    return {"health_s": health - t0, "ready_s": ready - t0, "first_answer_s": answered - t0}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="Add the torch.compile policy rows.")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    registry = Registry(work / "registry")  # the benchmark's own: just its reward model
    home = Registry()
    base = home.load(DEFAULT_MODEL_NAME)
    init_reward_model(home, DEFAULT_MODEL_NAME, RM_NAME, out=registry)

    scenarios = {**SCENARIOS, **(COMPILED if args.compiled else {})}
    names = list(scenarios)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            cache = work / f"cache-{repeat}-{names.index(name)}"
            cache.mkdir()
            for kind in ("cold", "warm"):
                dropped = drop_page_cache() if kind == "cold" else False
                row = one_start(scenarios[name], base.path, registry.root, cache, work, args.timeout_s)
                row |= {"scenario": name, "start": kind, "repeat": repeat, "page_cache_dropped": dropped}
                runs.append(row)
                print(json.dumps(row), flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        for kind in ("cold", "warm"):
            rows = [r for r in runs if r["scenario"] == name and r["start"] == kind]
            summary.setdefault(name, {})[kind] = {
                key: round(statistics.median(r[key] for r in rows), 1)
                for key in ("health_s", "ready_s", "first_answer_s")
            }
    print(f"\n{'scenario':28s} {'ready cold':>11s} {'warm':>7s} {'first answer cold':>18s} {'warm':>7s}")
    for name, kinds in summary.items():
        c, w = kinds["cold"], kinds["warm"]
        ready = f"{c['ready_s']:10.1f}s {w['ready_s']:6.1f}s"
        print(f"{name:28s} {ready} {c['first_answer_s']:17.1f}s {w['first_answer_s']:6.1f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"command": " ".join(sys.argv), "repeats": args.repeats, "runs": runs, "median": summary}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

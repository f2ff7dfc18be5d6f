"""A bounded soak: mixed traffic against one bonserve while its policy is hot-swapped.

    .venv/bin/python -m loadtests.soak --duration-s 1200 --out docs/benchmarks/soak

Run by hand (about 20 min plus start-up on 2 CPU cores); not part of the test suite. It
starts its own server on 127.0.0.1 (a throw-away registry holding the base model, two LoRA
adapters with random weights, one full checkpoint whose weights differ from the base, and an
untrained reward model), with an API key and an admin key, and for `--duration-s` sends:

    chat n=1, chat n=4, chat best_of=4 (Best-of-N), streamed chat, streamed chat cancelled
    by the client after its first chunk, and bad input (an unknown role, max_tokens=-1, a
    body over the size cap, a wrong key) that must be refused with 4xx

from `--concurrency` clients to the alias `policy`, while the alias is promoted to the other
LoRA adapter every `--promote-every-s` and once, half-way, to the full checkpoint (a full
swap: a new engine warmed, the old one drained).

It reports, and writes to OUT/summary.json (+ OUT/requests.jsonl, one line per request):
failed valid requests (must be 0), 5xx responses (must be 0), whether every request sent
is counted in `bonserve_requests_total` (the metric's delta over the run equals the number
of requests, refused ones included), the promotions done, and the resident memory (RSS) of
every process of the server at start and at end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

API_KEY = "soak-client-key"
ADMIN_KEY = "soak-admin-key"
KINDS = ("n1", "n4", "bon4", "stream", "cancel", "bad_role", "bad_max_tokens", "too_big", "bad_key")
VALID = {"n1", "n4", "bon4", "stream", "cancel"}


@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float
    at: float
    error: str = ""


# --------------------------------------------------------------------------- set-up


def prepare_registry(root: Path) -> dict[str, str]:
    """Base (linked), two random LoRA adapters, one full checkpoint, an untrained RM."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.registry import DEFAULT_MODEL_NAME, Manifest, Registry
    from training.merge import merge_entry
    from training.reward import init_reward_model

    source = Registry()
    registry = Registry(root)
    base_dir = registry.path_of(DEFAULT_MODEL_NAME)
    base_dir.mkdir(parents=True)
    for path in source.path_of(DEFAULT_MODEL_NAME).iterdir():
        (base_dir / path.name).symlink_to(path)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    names = {"base": DEFAULT_MODEL_NAME}
    for i, name in enumerate(("soak-lora-a", "soak-lora-b")):
        torch.manual_seed(10 + i)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # small random B: outputs change, text stays text
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.mul_(0.01)
        manifest = Manifest(name=name, kind="sft", format="lora", base_model=DEFAULT_MODEL_NAME)
        with registry.write(manifest) as staging:
            peft_model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        names[name] = name
    names["full"] = merge_entry(registry, "soak-lora-a", out_name="soak-full").name
    init_reward_model(registry, DEFAULT_MODEL_NAME, "soak-rm")
    names["rm"] = "soak-rm"
    return names


def process_rss(pid: int) -> dict[str, int]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[f"{p.pid}:{p.name()}"] = p.memory_info().rss
    return out


def requests_total(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bonserve_requests_total{")
    )


# --------------------------------------------------------------------------- traffic


def _body(kind: str, rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    body: dict[str, Any] = {
        "model": "policy",
        "messages": [{"role": "user", "content": f"What is {a} + {b}? Reply with just the number."}],
        "max_tokens": 16,
        "temperature": 0.8,
    }
    if kind == "n4":
        body["n"] = 4
    elif kind == "bon4":
        body["best_of"] = 4
    elif kind in ("stream", "cancel"):
        body["stream"] = True
    elif kind == "bad_role":
        body["messages"] = [{"role": "wizard", "content": "hi"}]
    elif kind == "bad_max_tokens":
        body["max_tokens"] = -1
    elif kind == "too_big":
        body["messages"] = [{"role": "user", "content": "x" * (2 << 20)}]
    return body


async def one(client: httpx.AsyncClient, kind: str, rng: random.Random, t0: float) -> Outcome:
    headers = {"Authorization": f"Bearer {'wrong' if kind == 'bad_key' else API_KEY}"}
    body = _body(kind, rng)
    start = time.perf_counter()
    try:
        if kind in ("stream", "cancel"):
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                status = r.status_code
                error = ""
                async for line in r.aiter_lines():
                    if kind == "cancel" and line.startswith("data:"):
                        break  # leave mid-stream: the server must abort and account it
                    if line.startswith("data:") and '"error"' in line:
                        error = line[:300]
                if error:
                    status = 599  # an error event after a 200 header: a failed request
            return Outcome(kind, status, time.perf_counter() - start, start - t0, error)
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        error = "" if r.status_code == 200 else r.text[:300]
        return Outcome(kind, r.status_code, time.perf_counter() - start, start - t0, error)
    except httpx.HTTPError as exc:
        return Outcome(kind, 0, time.perf_counter() - start, start - t0, f"{type(exc).__name__}: {exc}")


async def drive(base_url: str, args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    weights = {"n1": 30, "n4": 10, "bon4": 15, "stream": 15, "cancel": 8}
    weights.update({k: 3 for k in KINDS if k not in weights})
    kinds, w = list(weights), list(weights.values())
    outcomes: list[Outcome] = []
    promotions: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stop_at = t0 + args.duration_s
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    timeout = httpx.Timeout(300.0)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while time.perf_counter() < stop_at and len(outcomes) < args.max_requests:
                outcomes.append(await one(client, rng.choices(kinds, w)[0], rng, t0))

        async def promoter() -> None:
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            targets = [names["soak-lora-b"], names["soak-lora-a"]]
            full_done, i = False, 0
            while True:
                await asyncio.sleep(args.promote_every_s)
                if time.perf_counter() >= stop_at - 10:
                    return
                half = time.perf_counter() - t0 >= args.duration_s / 2
                target = names["full"] if half and not full_done else targets[i % 2]
                full_done = full_done or target == names["full"]
                i += 1
                start = time.perf_counter()
                r = await client.post(
                    "/admin/aliases/promote", json={"alias": "policy", "model": target}, headers=admin
                )
                promotions.append(
                    {
                        "at_s": round(start - t0, 1),
                        "target": target,
                        "status": r.status_code,
                        "seconds": round(time.perf_counter() - start, 2),
                        "body": r.text[:300],
                    }
                )
                print(f"[soak] promote policy -> {target}: {r.status_code}", flush=True)

        promote = asyncio.create_task(promoter())
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        promote.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await promote
    return {"outcomes": outcomes, "promotions": promotions}


# --------------------------------------------------------------------------- main


def summarise(outcomes: list[Outcome], promotions: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, Counter[int]] = {k: Counter() for k in KINDS}
    for o in outcomes:
        by_kind[o.kind][o.status] += 1
    failed_valid = [asdict(o) for o in outcomes if o.kind in VALID and o.status != 200]
    refused_bad = all(200 < s < 500 for k in KINDS if k not in VALID for s in by_kind[k])
    return {
        "requests": len(outcomes),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "failed_valid_requests": len(failed_valid),
        "failed_valid_examples": failed_valid[:10],
        "server_errors_5xx": sum(1 for o in outcomes if o.status >= 500 and o.status != 599),
        "bad_input_all_refused_with_4xx": refused_bad,
        "promotions": promotions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=1200)
    parser.add_argument("--max-requests", type=int, default=20000, help="A hard cap on requests sent.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--promote-every-s", type=float, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("soak-report"))
    args = parser.parse_args(argv)

    from loadtests.servers import start_bonserve

    work = Path(tempfile.mkdtemp(prefix="bonserve-soak-"))
    print(f"[soak] preparing a registry in {work}", flush=True)
    names = prepare_registry(work / "registry")
    # The 2 MiB body of `too_big` must exceed the cap (1 MiB by default).
    flags = [
        "--registry", str(work / "registry"), "--model", names["base"], "--alias", "policy",
        "--reward-model", names["rm"], "--max-loras", "2", "--max-lora-rank", "16",
        "--api-key", API_KEY, "--admin-key", ADMIN_KEY, "--enforce-eager",
    ]  # fmt: skip
    server = start_bonserve(work, *flags)
    try:
        promote0 = httpx.post(
            f"{server.base_url}/admin/aliases/promote",
            json={"alias": "policy", "model": names["soak-lora-a"]},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=300,
        )
        print(f"[soak] initial promote -> soak-lora-a: {promote0.status_code}", flush=True)
        rss_start = process_rss(server.process.pid)
        metric_before = requests_total(server.base_url)
        result = asyncio.run(drive(server.base_url, args, names))
        time.sleep(2)  # let the last accounting land
        metric_delta = requests_total(server.base_url) - metric_before
        rss_end = process_rss(server.process.pid)
    finally:
        code = server.stop()
    outcomes = result["outcomes"]
    summary = summarise(outcomes, result["promotions"])
    summary.update(
        {
            "duration_s": args.duration_s,
            "concurrency": args.concurrency,
            "requests_total_metric_delta": metric_delta,
            "every_request_counted": metric_delta == len(outcomes),
            "rss_start_bytes": rss_start,
            "rss_end_bytes": rss_end,
            "rss_start_total_mib": round(sum(rss_start.values()) / 2**20, 1),
            "rss_end_total_mib": round(sum(rss_end.values()) / 2**20, 1),
            "server_exit_code": code,
            "command": "python -m loadtests.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    with (args.out / "requests.jsonl").open("w") as f:
        for o in outcomes:
            f.write(json.dumps(asdict(o)) + "\n")
    brief = {k: v for k, v in summary.items() if not k.startswith("rss_") or k.endswith("mib")}
    brief.pop("failed_valid_examples")
    print(json.dumps(brief, indent=2))
    ok = summary["failed_valid_requests"] == 0 and summary["server_errors_5xx"] == 0
    return 0 if ok and summary["bad_input_all_refused_with_4xx"] and summary["every_request_counted"] else 1


if __name__ == "__main__":
    sys.exit(main())

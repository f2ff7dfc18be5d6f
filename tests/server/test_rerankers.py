"""A reward model per served policy (server/rerankers.py) and the rerank gate, without real
engines: the rules (promotion pairing, --reward-models, trained_for, --reward-model), one
engine per distinct reward model, promotion with a reward model, the gate's 409 and `force`,
the flags in /v1/models, usage and the Prometheus gauges, and every replica following a
pairing. Engines are the named fakes of tests/server/fakes.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from core.desired_state import AliasRewardModel, read_desired
from core.registry import Manifest, Registry
from core.rerank import record_evaluation
from server.app import build_state
from server.config import Settings
from server.engines import ManagedEngine
from server.models import ServedModel
from server.rerankers import Rerankers, trained_for_links
from server.state import AppState
from tests.server.conftest import Serve, assert_envelope
from tests.server.conftest import asgi_client as client
from tests.server.fakes import FakeAsyncLLM, FakeEngineBuilder

pytestmark = pytest.mark.timeout(60)

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "best_of": 2}


def entry(registry: Registry, name: str, kind: str, trained_for: str | None = None, **kw: Any) -> None:
    extra = {"trained_for": {"policy": trained_for, "temperature": 0.8}} if trained_for else {}
    with registry.write(Manifest(name=name, kind=kind, base_model="base", extra=extra, **kw)) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"\0" * 1024)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    entry(reg, "base", "base")
    entry(reg, "tuned", "sft")
    entry(reg, "rm-default", "rm")
    entry(reg, "rm-other", "rm")
    entry(reg, "rm-tuned", "rm", trained_for="tuned")
    return reg


SERVE_DEFAULTS: dict[str, Any] = {
    "model": "base",
    "alias": "policy",
    "reconcile_interval_s": 0,
    "open_admin": True,
    "reward_model": "rm-default",
}


async def cards(c: httpx.AsyncClient) -> dict[str, Any]:
    return {m["id"]: m["bonserve"] for m in (await c.get("/v1/models")).json()["data"]}


def gauge(name: str, policy: str, reward_model: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"policy": policy, "reward_model": reward_model})


def reward_builds(state: AppState) -> list[str]:
    assert state.manager is not None and isinstance(state.manager.builder, FakeEngineBuilder)
    return [served for role, _, served in state.manager.builder.built if role == "reward"]


# --------------------------------------------------------------------------- the rules


def test_rules_in_order() -> None:
    engine = ManagedEngine("policy", FakeAsyncLLM)
    base, tuned, ppo = (ServedModel(name=n, engine=engine) for n in ("base", "tuned", "ppo"))
    served_as = ServedModel(name="public", engine=engine, entry="sft-v3")
    rerank = Rerankers(
        default="rm-default",
        explicit={"tuned": "rm-x", "sft-v3": "rm-y", "off": None},
        links={"base": "rm-base", "ppo": "rm-bad", "tuned": "rm-linked"},
        evaluations={"rm-bad": {"ppo": {"gap_captured": -0.1}}, "rm-base": {"base": {"gap_captured": 0.4}}},
    )

    def rule(name: str, model: ServedModel, paired: AliasRewardModel | None = None) -> tuple[Any, ...]:
        p = rerank.resolve(name, model, paired)
        return p.reward_model, p.source, p.usable

    assert rule("policy", tuned, AliasRewardModel("rm-p")) == ("rm-p", "promotion", True)
    assert rule("tuned", tuned) == ("rm-x", "--reward-models", True)  # beats its trained_for link
    assert rule("public", served_as) == ("rm-y", "--reward-models", True)  # keyed by its entry
    assert rule("off", ServedModel(name="off", engine=engine)) == (None, "--reward-models", False)
    assert rule("base", base) == ("rm-base", "trained_for", True)
    assert rule("ppo", ppo) == ("rm-default", "--reward-model", True)  # the unhelpful link is skipped
    assert rule("x", ServedModel(name="x", engine=engine)) == ("rm-default", "--reward-model", True)
    assert rerank.resolve("base", base, None).verdict.gap_captured == 0.4  # type: ignore[union-attr]
    assert Rerankers().resolve("x", base, None).source == "none"
    rerank.allow_unhelpful = True  # the setting: an unhelpful link is used, flagged as forced
    forced = rerank.resolve("ppo", ppo, None)
    assert (forced.reward_model, forced.forced, forced.usable) == ("rm-bad", True, True)


def test_trained_for_links_pick_the_newest_full_reward_model(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    entry(reg, "old", "rm", trained_for="tuned", created_at=1.0)
    entry(reg, "new", "rm", trained_for="tuned", created_at=2.0)
    entry(reg, "adapter", "rm", trained_for="tuned", format="lora", created_at=3.0)
    entry(reg, "not-rm", "sft", trained_for="base")
    entry(reg, "mixed", "rm")  # trained on several policies' samples: names none
    assert trained_for_links(reg) == {"tuned": "new"}


def test_reward_models_setting() -> None:
    settings = Settings(reward_models="policy=rm-a, tuned=none")
    assert settings.reward_model_map() == {"policy": "rm-a", "tuned": None}
    for bad in ("policy", "policy=../x", "=rm"):
        with pytest.raises(ValueError, match="POLICY=RM"):
            Settings(reward_models=bad)


# --------------------------------------------------------------------------- servers


async def test_each_policy_reranks_with_its_own_reward_model(serve: Serve, registry: Registry) -> None:
    state = await serve(reward_models="base=rm-other,other-name=rm-other")
    assert sorted(state.rerank.scorers) == ["rm-default", "rm-other"]
    assert sorted(k for k in state.engines if k.startswith("reward")) == ["reward", "reward:rm-other"]
    async with client(state) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "base"})
        assert r.json()["usage"]["bonserve"]["reward_model"] == "rm-other"
        promoted = await c.post("/admin/aliases/promote", json={"alias": "policy", "model": "tuned"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["reward_model"] == "rm-tuned"  # trained for it: chosen at promotion
        seen = await cards(c)
        assert (seen["policy"]["reward_model"], seen["policy"]["source"]) == ("rm-tuned", "trained_for")
        assert (seen["base"]["reward_model"], seen["base"]["source"]) == ("rm-other", "--reward-models")
        assert seen["policy"]["rerank"] == {
            "evaluated": False,
            "gap_captured": None,
            "pairwise_accuracy": None,
            "allowed": True,
            "forced": False,
            "reason": "'rm-tuned' was never evaluated on 'tuned'",
        }
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "policy"})
        assert r.json()["usage"]["bonserve"]["reward_model"] == "rm-tuned"
        assert r.json()["usage"]["bonserve"]["rerank_allowed"] is True
        # an explicit pairing at promotion (the checkpoint itself keeps its trained_for link)
        paired = {"alias": "policy", "model": "tuned", "reward_model": "rm-other"}
        assert (await c.post("/admin/aliases/promote", json=paired)).status_code == 200
        rewards = await c.post(
            "/v1/rewards", json={"items": [{"messages": CHAT["messages"], "response": "a"}]}
        )
        assert rewards.json()["model"] == "rm-default"  # the default, unless `model` names another
        assert (await cards(c))["tuned"]["reward_model"] == "rm-tuned"
    assert sorted(state.rerank.scorers) == ["rm-default", "rm-other", "rm-tuned"]
    assert reward_builds(state).count("rm-other") == 1  # one engine, shared by base and policy
    assert read_desired(registry.root).alias_reward_models == {"policy": AliasRewardModel("rm-other")}


async def test_the_gate_refuses_an_unhelpful_pairing_unless_forced(serve: Serve, registry: Registry) -> None:
    record_evaluation(registry.root, "rm-other", "tuned", {"gap_captured": -0.2, "pairwise_accuracy": 0.45})
    a, b = await serve(), await serve()
    body = {"alias": "policy", "model": "tuned", "reward_model": "rm-other"}
    async with client(a) as c:
        err = assert_envelope(
            await c.post("/admin/aliases/promote", json=body), 409, "unhelpful_reward_model"
        )
        assert "-0.20 of the oracle gap" in err["message"] and err["param"] == "reward_model"
        assert a.router.aliases() == {"policy": "base"} and read_desired(registry.root).revision == 0
        assert "rm-other" not in reward_builds(a)  # refused before its engine started

        r = await c.post("/admin/aliases/promote", json={**body, "force": True})
        assert r.status_code == 200 and r.json()["rerank"]["rerank"]["forced"] is True
        card = (await cards(c))["policy"]
        assert card["rerank"]["allowed"] is False and card["rerank"]["forced"] is True
        assert card["rerank"]["gap_captured"] == -0.2 and card["rerank"]["pairwise_accuracy"] == 0.45
        assert gauge("bonserve_rerank_forced", "policy", "rm-other") == 1
        assert gauge("bonserve_rerank_allowed", "policy", "rm-other") == 0
        assert gauge("bonserve_rerank_gap_captured", "policy", "rm-other") == -0.2
        assert gauge("bonserve_rerank_allowed", "base", "rm-default") == 1
        assert math.isnan(gauge("bonserve_rerank_gap_captured", "base", "rm-default") or 0.0)
        usage = (await c.post("/v1/chat/completions", json={**CHAT, "model": "policy"})).json()["usage"]
        assert (usage["bonserve"]["reward_model"], usage["bonserve"]["rerank_allowed"]) == ("rm-other", False)
    assert read_desired(registry.root).alias_reward_models == {"policy": AliasRewardModel("rm-other", True)}

    # Every replica applies the pairing as recorded, forced included.
    assert b.manager is not None and await b.manager.reconcile()
    assert b.router.aliases() == {"policy": "tuned"} and "rm-other" in b.rerank.scorers
    assert b.rerank.pairing("policy", b.router).forced

    # Promoting the alias without a reward model ends the pairing (the rules choose again).
    assert a.manager is not None
    await a.manager.promote("policy", "tuned")
    assert read_desired(registry.root).alias_reward_models == {}
    assert await b.manager.reconcile()
    assert b.rerank.pairing("policy", b.router).reward_model == "rm-tuned"
    assert "rm-other" not in b.rerank.scorers  # unused: its engine was freed


async def test_the_gate_covers_the_rules_choice_and_requests(serve: Serve, registry: Registry) -> None:
    """A promotion without a reward model is gated on the one the rules pick; a refused
    pairing reached some other way does not rerank (400), unless the start-up setting forces it."""
    record_evaluation(registry.root, "rm-default", "tuned", {"gap_captured": 0.0})
    record_evaluation(registry.root, "rm-tuned", "tuned", {"gap_captured": -0.5})  # the link is skipped
    state = await serve()
    assert state.manager is not None
    async with client(state) as c:
        err = assert_envelope(
            await c.post("/admin/aliases/promote", json={"alias": "policy", "model": "tuned"}),
            409,
            "unhelpful_reward_model",
        )
        assert "'rm-default' (--reward-model)" in err["message"]
        await state.manager.load("tuned")
        err = assert_envelope(await c.post("/v1/chat/completions", json={**CHAT, "model": "tuned"}), 400)
        assert err["code"] == "unhelpful_reward_model" and "majority" in err["message"]
        ok = await c.post("/v1/chat/completions", json={**CHAT, "model": "tuned", "bon_selector": "majority"})
        assert ok.status_code == 200
        card = (await cards(c))["tuned"]
        assert (card["reward_model"], card["rerank"]["allowed"], card["rerank"]["forced"]) == (
            "rm-default",
            False,
            False,
        )
        forced = await c.post(
            "/admin/aliases/promote", json={"alias": "policy", "model": "tuned", "force": True}
        )
        assert forced.status_code == 200, forced.text
    assert read_desired(registry.root).alias_reward_models == {"policy": AliasRewardModel("rm-default", True)}

    loose = await serve(allow_unhelpful_reward_model=True, reward_models="tuned=rm-default")
    assert loose.manager is not None
    await loose.manager.load("tuned")
    async with client(loose) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "tuned"})
        assert r.status_code == 200 and r.json()["usage"]["bonserve"]["rerank_allowed"] is False


async def test_a_new_evaluation_changes_the_gate_at_the_next_reconcile(
    serve: Serve, registry: Registry
) -> None:
    state = await serve()
    assert state.manager is not None
    assert gauge("bonserve_rerank_allowed", "base", "rm-default") == 1
    record_evaluation(registry.root, "rm-default", "base", {"gap_captured": -0.1, "pairwise_accuracy": 0.5})
    await state.manager.reconcile()
    assert gauge("bonserve_rerank_allowed", "base", "rm-default") == 0
    assert gauge("bonserve_rerank_gap_captured", "base", "rm-default") == -0.1
    assert not state.rerank.pairing("base", state.router).usable
    assert "rerank" in state.manager.state() and state.manager.state()["reward_models"] == ["rm-default"]


async def test_several_reward_models_and_v1_rewards(serve: Serve) -> None:
    state = await serve(reward_model=None, reward_models="base=rm-other")
    assert state.rerank.default is None and sorted(state.rerank.scorers) == ["rm-other"]
    async with client(state) as c:
        items = {"items": [{"messages": CHAT["messages"], "response": "a"}]}
        assert (await c.post("/v1/rewards", json=items)).json()["model"] == "rm-other"  # the only one
        missing = await c.post("/v1/rewards", json={**items, "model": "rm-default"})
        assert_envelope(missing, 404, "model_not_found")
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "policy"})  # the alias: base
        assert r.json()["usage"]["bonserve"]["reward_model"] == "rm-other"


def test_start_up_refuses_a_mapping_to_a_non_reward_model(registry: Registry) -> None:
    with pytest.raises(SystemExit, match="not a full reward-model or verifier entry"):
        build_state(Settings(registry=registry.root, model="base", reward_models="base=tuned"))
    with pytest.raises(SystemExit, match="not found"):
        build_state(Settings(registry=registry.root, model="base", reward_models="base=no-such-rm"))

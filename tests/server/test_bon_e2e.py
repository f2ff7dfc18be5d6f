"""Best-of-N against real engines: policy + pooling reward model in one `bonserve serve`.

The reward checkpoint is made from the base model (`init_reward_model`: real
LlamaForSequenceClassification weights loaded by vLLM's pooling runner) with a score head
that means something rather than a random one: the base's own output row for the end-of-turn
token, so the reward is how strongly the model expects the conversation to end there. Scores
are recomputed independently with transformers, from the model's own chat template as text
(not the server's token-layout helper).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from core.registry import Registry
from loadtests.servers import ServerProcess, start_bonserve
from tests.reference import transformers_greedy, transformers_rewards
from tests.synthetic import end_of_turn_head
from training.reward import init_reward_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

RM = "rm-test-init"
RM2 = "rm-test-init-2"  # another score head: a different reward model to swap in
MESSAGES = [{"role": "user", "content": "Suggest a name for a pet goldfish."}]
RM_POLICY = "smollm2-135m-instruct"  # the served name of the policy


@pytest.fixture(scope="module")
def reward_registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from core.registry import Manifest

    staging = Registry(tmp_path_factory.mktemp("staging"))
    registry = Registry(tmp_path_factory.mktemp("registry"))
    init_reward_model(Registry(default_model.parent), default_model.name, RM, seed=0, out=staging)
    end_of_turn_head(staging.path_of(RM), default_model)
    manifest = Manifest(name=RM, kind="rm", base_model=default_model.name, parent=default_model.name)
    with registry.write(manifest) as out:  # re-registered: the manifest's checksums cover the new head
        for path in staging.path_of(RM).iterdir():
            if path.name != "manifest.json":
                (out / path.name).write_bytes(path.read_bytes())
    init_reward_model(Registry(default_model.parent), default_model.name, RM2, seed=1, out=registry)
    return registry


def test_the_reward_model_is_not_random(reward_registry: Registry) -> None:
    """The end-of-turn head separates a finished answer from a cut-off one (a random head
    would order them by chance)."""
    finished, cut = transformers_rewards(
        reward_registry.path_of(RM), MESSAGES, ["I would call it Bubbles.", "I would call it"]
    )
    assert finished > cut, (finished, cut)


@pytest.fixture(scope="module")
def bon_server(
    default_model: Path, reward_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = start_bonserve(
        tmp_path_factory.mktemp("bon"),
        "--model",
        str(default_model),
        "--served-model-name",
        "smollm2-135m-instruct",
        "--registry",
        str(reward_registry.root),
        "--reward-model",
        RM,
        "--enforce-eager",
        "--open-admin",  # loopback: the reward-model swap test below promotes without a key
    )
    yield srv
    srv.stop()


def client(srv: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.v1, api_key="unused", max_retries=0, timeout=120)


def test_openai_client_best_of_extra_body(bon_server: ServerProcess) -> None:
    r = client(bon_server).chat.completions.create(
        model=bon_server.model,
        messages=MESSAGES,
        n=2,
        max_tokens=16,
        temperature=1.0,
        seed=5,
        extra_body={"best_of": 4},
    )
    assert len(r.choices) == 2
    rewards = [ch.model_extra["reward"] for ch in r.choices]
    assert rewards[0] >= rewards[1]
    extra = r.usage.model_extra["bonserve"]
    assert extra["candidates"] == 4
    assert r.usage.completion_tokens == extra["decoded_tokens"] >= extra["delivered_tokens"]
    assert extra["reward_model_tokens"] > 0


def test_reranking_matches_transformers(bon_server: ServerProcess, reward_registry: Registry) -> None:
    """Same seed, best_of=n=4 (no rerank) gives all candidates; BoN n=2 must return the two
    that transformers scores highest, best first, with matching rewards."""
    c = client(bon_server)
    common = {
        "model": bon_server.model,
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 1234,
    }
    everything = c.chat.completions.create(n=4, extra_body={"best_of": 4}, **common)
    candidates = [ch.message.content for ch in everything.choices]
    assert len(set(candidates)) >= 2, candidates
    reference = transformers_rewards(reward_registry.path_of(RM), MESSAGES, candidates)
    expected = sorted(range(4), key=lambda i: (-reference[i], i))[:2]

    bon = c.chat.completions.create(n=2, extra_body={"best_of": 4}, **common)
    assert [ch.message.content for ch in bon.choices] == [candidates[i] for i in expected]
    for ch, i in zip(bon.choices, expected, strict=True):
        assert ch.model_extra["reward"] == pytest.approx(reference[i], abs=2e-3, rel=2e-3)


def test_rewards_endpoint_matches_transformers(bon_server: ServerProcess, reward_registry: Registry) -> None:
    responses = ["Bubbles.", "I would call it Captain Fin.", "no"]
    body = httpx.post(
        bon_server.v1 + "/rewards",
        timeout=60,
        json={"items": [{"messages": MESSAGES, "response": r} for r in responses]},
    ).json()
    reference = transformers_rewards(reward_registry.path_of(RM), MESSAGES, responses)
    assert [d["reward"] for d in body["data"]] == pytest.approx(reference, abs=2e-3, rel=2e-3)
    assert body["model"] == RM and body["usage"]["prompt_tokens"] > 0


def test_streaming_best_of_streams_the_winner(bon_server: ServerProcess) -> None:
    c = client(bon_server)
    common = {
        "model": bon_server.model,
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 77,
        "extra_body": {"best_of": 3},
    }
    full = c.chat.completions.create(**common)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **common))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.model_extra["bonserve"]["candidates"] == 3


def test_selectors_without_the_reward_model_on_the_real_engine(bon_server: ServerProcess) -> None:
    """The same seeded candidates, all returned (n = best_of) with their token logprobs, are
    the reference: `logprob` must return the one with the highest mean token logprob, and
    `majority` the first of the most frequent answers; neither reads the reward model. The
    model card says what reranks the policy."""
    c = client(bon_server)
    common = {
        "model": bon_server.model,
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 31,
    }
    every = c.chat.completions.create(n=4, logprobs=True, extra_body={"best_of": 4}, **common)
    means = [sum(t.logprob for t in ch.logprobs.content) / len(ch.logprobs.content) for ch in every.choices]
    texts = [ch.message.content for ch in every.choices]
    best = max(range(4), key=lambda i: (means[i], -i))
    by_logprob = c.chat.completions.create(
        n=1, extra_body={"best_of": 4, "bon_selector": "logprob"}, **common
    )
    assert by_logprob.choices[0].message.content == texts[best]
    assert by_logprob.choices[0].logprobs is None  # asked of the engine for ranking, not returned
    usage = by_logprob.usage.model_extra["bonserve"]
    assert (usage["selector"], usage["reward_model_tokens"]) == ("logprob", 0)

    def vote(text: str) -> str:  # the last number, else the text without case or spacing
        numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
        return f"{float(numbers[-1]):g}" if numbers else " ".join(text.lower().split())

    votes = Counter(vote(t) for t in texts)
    winner = next(t for t in texts if votes[vote(t)] == max(votes.values()))
    by_vote = c.chat.completions.create(
        n=1, extra_body={"best_of": 4, "bon_selector": "majority", "return_candidates": True}, **common
    )
    assert by_vote.choices[0].message.content == winner
    assert by_vote.model_extra["candidates"][0]["score"] == max(votes.values()) / 4

    card = next(
        m for m in httpx.get(bon_server.v1 + "/models", timeout=30).json()["data"] if m["id"] == RM_POLICY
    )
    assert card["bonserve"]["reward_model"] == RM and card["bonserve"]["source"] == "--reward-model"
    assert card["bonserve"]["rerank"]["allowed"] and not card["bonserve"]["rerank"]["evaluated"]


@pytest.mark.parametrize(
    "extra,status",
    [
        ({"best_of": 1, "n": 2}, 400),
        ({"best_of": 0}, 400),
        ({"best_of": 17}, 400),
        ({"best_of": "many"}, 400),
    ],
)
def test_bad_best_of(bon_server: ServerProcess, extra: dict, status: int) -> None:
    body = {"model": bon_server.model, "messages": MESSAGES, "max_tokens": 4, **extra}
    r = httpx.post(bon_server.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert json.loads(r.text)["error"]["param"] in ("best_of", "n")


@pytest.mark.parametrize("mode", ["hold", "overlap"])
def test_pruned_best_of_on_the_real_engine(
    bon_server: ServerProcess, reward_registry: Registry, mode: str
) -> None:
    """Pruning stops candidates in the engine: fewer decoded tokens than full Best-of-N on the
    same seed, the pruned ones reported with partial rewards that transformers reproduces; when
    every candidate ends before the checkpoint the choice and rewards are full Best-of-N's
    (candidate i is seeded as vLLM seeds child i)."""
    url = bon_server.v1 + "/chat/completions"
    body = {"model": bon_server.model, "messages": MESSAGES, "best_of": 4, "max_tokens": 24, "seed": 7}
    body |= {"temperature": 1.0, "return_candidates": True}
    prune = {"bon_prune_at": [4], "bon_prune_fraction": 0.5, "bon_prune_mode": mode}
    full = httpx.post(url, json=body, timeout=120).json()
    pruned = httpx.post(url, json={**body, **prune}, timeout=120).json()
    assert pruned["usage"]["bonserve"]["candidates_pruned"] == 2, pruned["usage"]
    assert pruned["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
    outcomes = [c["outcome"] for c in pruned["candidates"]]
    assert outcomes.count("pruned") == 2 and all(c["choice_index"] is None for c in pruned["candidates"][2:])

    # The partial rewards that decided the pruning are the reward model's scores of the partial
    # answers, recomputed by transformers from the chat template's text.
    dropped = [c for c in pruned["candidates"] if c["outcome"] == "pruned"]
    assert all(c["partial_text"] and c["text"].startswith(c["partial_text"]) for c in dropped), dropped
    reference = transformers_rewards(
        reward_registry.path_of(RM), MESSAGES, [c["partial_text"] for c in dropped]
    )
    assert [c["partial_reward"] for c in dropped] == pytest.approx(reference, abs=2e-3, rel=2e-3)

    short = {**body, "max_tokens": 3}  # every candidate ends (by length) before token 4
    a = httpx.post(url, json=short, timeout=120).json()
    b = httpx.post(url, json={**short, **prune}, timeout=120).json()
    assert b["usage"]["bonserve"]["candidates_pruned"] == 0
    assert [c["message"]["content"] for c in b["choices"]] == [c["message"]["content"] for c in a["choices"]]
    assert [c["reward"] for c in b["choices"]] == pytest.approx([c["reward"] for c in a["choices"]], abs=1e-3)
    if mode == "hold":  # nothing decoded while scoring: a pruned candidate cost exactly its prefix
        assert all(c["completion_tokens"] == 4 and c["text"] == c["partial_text"] for c in dropped)
        assert pruned["usage"]["bonserve"]["resumed_prompt_tokens"] > 0


def test_margin_prunes_against_the_finished_candidates_on_the_real_engine(bon_server: ServerProcess) -> None:
    """bon_prune_margin on the real engine, fraction 0: at the checkpoint every running
    candidate whose partial reward is below the best finished candidate's reward is aborted and
    the others decode on. The checkpoint is placed just after the shortest candidate of a full
    Best-of-N on the same seed ends (the pruned request samples the same candidates up to it),
    so one has finished there and at least one is still running."""
    url = bon_server.v1 + "/chat/completions"
    body = {"model": bon_server.model, "messages": MESSAGES, "best_of": 4, "max_tokens": 24}
    body |= {"temperature": 1.0, "return_candidates": True}
    for seed in range(7, 17):
        full = httpx.post(url, json={**body, "seed": seed}, timeout=120).json()
        lengths = sorted(c["completion_tokens"] for c in full["candidates"] if c["finish_reason"] == "stop")
        longest = max(c["completion_tokens"] for c in full["candidates"])
        if lengths and longest >= lengths[0] + 3:
            break
    else:
        pytest.fail("no seed gave a candidate that ends 3 tokens before another")
    at = lengths[0] + 1
    prune = {"seed": seed, "bon_prune_at": [at], "bon_prune_fraction": 0.0, "bon_prune_mode": "hold"}
    r = httpx.post(url, json={**body, **prune, "bon_prune_margin": 0.0}, timeout=120).json()
    cands = r["candidates"]
    best_done = max(c["reward"] for c in cands if c["outcome"] == "finished" and c["completion_tokens"] <= at)
    for c in cands:
        if c["outcome"] == "pruned":
            assert c["partial_reward"] < best_done, c
        elif c["partial_reward"] is not None:  # running at the checkpoint and kept
            assert c["partial_reward"] >= best_done, c
    # a margin so far below that every running candidate is under the bar: all are aborted
    r = httpx.post(url, json={**body, **prune, "bon_prune_margin": -1e9}, timeout=120).json()
    outcomes = {c["index"]: c["outcome"] for c in r["candidates"]}
    assert all(outcomes[c["index"]] == "finished" for c in full["candidates"] if c["completion_tokens"] < at)
    kept_long = [c for c in r["candidates"] if c["outcome"] == "finished" and c["completion_tokens"] > at]
    assert not kept_long, r["candidates"]
    assert r["usage"]["bonserve"]["candidates_pruned"] >= 1
    assert r["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]


def test_hold_resumes_where_the_candidate_paused(
    bon_server: ServerProcess, default_model: Path, reward_registry: Registry
) -> None:
    """A resumed candidate continues its own tokens: greedy candidates paused at two
    checkpoints and resumed as new engine requests end with transformers' greedy answer of the
    whole prompt, and the survivors' rewards are those of their full text. Top-k 1 makes the
    candidates greedy (vLLM refuses n > 1 at temperature 0)."""
    url = bon_server.v1 + "/chat/completions"
    body = {"model": bon_server.model, "messages": MESSAGES, "best_of": 4, "max_tokens": 16}
    body |= {"temperature": 1.0, "top_k": 1, "bon_prune_at": [3, 7], "bon_prune_mode": "hold"}
    body |= {"return_candidates": True}
    response = httpx.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    r = response.json()
    bs = r["usage"]["bonserve"]
    assert (bs["candidates_pruned"], bs["candidates_finished"]) == (3, 1), bs
    answer = r["choices"][0]["message"]["content"]
    assert answer == transformers_greedy(default_model, MESSAGES, 16)
    (reference,) = transformers_rewards(reward_registry.path_of(RM), MESSAGES, [answer])
    assert r["choices"][0]["reward"] == pytest.approx(reference, abs=2e-3, rel=2e-3)


def test_reward_engine_death_is_503_then_recovers(bon_server: ServerProcess) -> None:
    cores = [
        p for p in psutil.Process(bon_server.process.pid).children(recursive=True) if "EngineCore" in p.name()
    ]
    assert len(cores) == 2
    max(cores, key=lambda p: p.create_time()).kill()  # engines start policy first, reward second
    body = {"model": bon_server.model, "messages": MESSAGES, "max_tokens": 4, "best_of": 2}
    deadline = time.monotonic() + 300
    saw_503 = False
    while True:
        r = httpx.post(bon_server.v1 + "/chat/completions", json=body, timeout=60)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        saw_503 = True
        assert time.monotonic() < deadline, "reward engine did not come back"
        time.sleep(1)
    assert saw_503
    ready = bon_server.ready()
    assert ready["engines"]["reward"]["restarts"] == 1
    assert ready["engines"]["policy"]["restarts"] == 0


# --------------------------------------------------------------------------- metrics

K8S_MONITORING = Path(__file__).parents[2] / "k8s" / "components" / "monitoring"


def scrape(srv: ServerProcess) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(srv.base_url + "/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for key, v in samples.items() if key.split("{")[0] == name and all(w in key for w in want))


def test_metrics_move_by_the_right_amounts(bon_server: ServerProcess) -> None:
    m = bon_server.model
    before = scrape(bon_server)
    r = client(bon_server).chat.completions.create(
        model=m, messages=MESSAGES, n=1, max_tokens=12, temperature=1.0, seed=9, extra_body={"best_of": 3}
    )
    usage = r.usage.model_extra["bonserve"]
    after = scrape(bon_server)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("bonserve_requests_total", model=m, mode="bon", status="200") == 1
    assert delta("bonserve_decoded_tokens_total", model=m, mode="bon") == r.usage.completion_tokens
    assert delta("bonserve_delivered_tokens_total", model=m, mode="bon") == usage["delivered_tokens"]
    assert delta("bonserve_reward_model_tokens_total", model=m) == usage["reward_model_tokens"]
    assert delta("bonserve_prompt_tokens_total", model=m, mode="bon") == r.usage.prompt_tokens
    for hist in ("bonserve_e2e_request_latency_seconds", "bonserve_time_to_first_token_seconds"):
        assert delta(hist + "_count", model=m, mode="bon") == 1
    assert delta("bonserve_candidates_per_request_sum", model=m) == 3
    assert delta("bonserve_reward_scoring_seconds_count", model=m) == 1
    assert delta("bonserve_chosen_reward_count", model=m) == 1
    # vLLM's own series, for both engines in the process (vLLM counts each of the 3 sampled
    # candidates as a request, and each scored sequence as one)
    assert delta("vllm:request_success_total", model_name=m) == 3
    assert delta("vllm:request_success_total", model_name=RM) == 3


def test_dashboard_and_alerts_use_only_exported_series(bon_server: ServerProcess) -> None:
    import re

    # make sure every labelled series has at least one sample: single, BoN, stream, an error
    c = client(bon_server)
    c.chat.completions.create(model=bon_server.model, messages=MESSAGES, max_tokens=4)
    c.chat.completions.create(
        model=bon_server.model, messages=MESSAGES, max_tokens=4, extra_body={"best_of": 2}
    )
    list(c.chat.completions.create(model=bon_server.model, messages=MESSAGES, max_tokens=4, stream=True))
    exported = {key.split("{")[0] for key in scrape(bon_server)}
    used = set()
    for path in (K8S_MONITORING / "dashboard.json", K8S_MONITORING / "prometheusrule.yaml"):
        used |= set(re.findall(r"\b(bonserve_[a-z0-9_]+|vllm:[a-z0-9_:]+)", path.read_text()))
    assert len(used) >= 15
    missing = sorted(u for u in used if u not in exported)
    text = httpx.get(bon_server.base_url + "/metrics", timeout=30).text
    assert not missing, f"used by dashboard/alerts but not exported: {missing}\n" + "\n".join(
        ln for ln in text.splitlines() if "chosen" in ln
    )


def test_reward_model_hot_swap(bon_server: ServerProcess, reward_registry: Registry) -> None:
    """Runs last in this module: afterwards the server scores with RM2."""
    items = {"items": [{"messages": MESSAGES, "response": r} for r in ("Bubbles.", "Finn")]}
    before = httpx.post(bon_server.v1 + "/rewards", json=items, timeout=60).json()
    r = httpx.post(bon_server.base_url + "/admin/reward/promote", json={"model": RM2}, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == RM
    after = httpx.post(bon_server.v1 + "/rewards", json=items, timeout=60).json()
    assert (before["model"], after["model"]) == (RM, RM2)
    reference = transformers_rewards(reward_registry.path_of(RM2), MESSAGES, ["Bubbles.", "Finn"])
    assert [d["reward"] for d in after["data"]] == pytest.approx(reference, abs=2e-3, rel=2e-3)
    bad = httpx.post(
        bon_server.base_url + "/admin/reward/promote", json={"model": bon_server.model}, timeout=60
    )
    assert bad.status_code in (404, 422)
    ok = client(bon_server).chat.completions.create(
        model=bon_server.model, messages=MESSAGES, max_tokens=4, extra_body={"best_of": 2}
    )
    assert ok.usage.model_extra["bonserve"]["candidates"] == 2

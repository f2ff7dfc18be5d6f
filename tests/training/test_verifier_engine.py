"""The generative verifier scored by the real vLLM engine, against a transformers reference.

A verifier is trained here (the library call of `bonserve train verifier`) for a few
full-weight steps on verifier rows of 4 arithmetic prompts: far too few to check sums,
enough that its greedy check reaches " Verdict:". The test is the plumbing the benchmarks
rely on: vLLM's score of each reply equals the log p(" right") - log p(" wrong") that
transformers computes at the verdict token of its own greedy check (token ids, not decoded
strings), and repeated replies are scored once.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.registry import Registry
from core.verifier import FLOOR, MAX_CHECK_TOKENS, RIGHT, VERDICT, WRONG, check_messages
from training.reward_fns import VerifierReward
from training.tasks import get_task
from training.verifier import TransformersVerifier, score_with_verifier, sft_rows
from training.verifier import run as run_verifier
from training.verifier_config import VerifierConfig

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@functools.cache
def reference_model(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    ).eval()


@functools.cache
def reference_score(path: Path, messages: tuple[tuple[tuple[str, str], ...], ...], reply: str) -> float:
    """transformers' greedy check and verdict score (`messages` as nested tuples, to cache)."""
    import torch

    tok, model = reference_model(path)
    ids = tok.apply_chat_template(
        check_messages([dict(m) for m in messages], reply),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=MAX_CHECK_TOKENS,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, ids.shape[1] :].tolist()
    verdict_ids = tok.encode(VERDICT, add_special_tokens=False)
    (right_id,), (wrong_id,) = (
        tok.encode(RIGHT, add_special_tokens=False),
        tok.encode(WRONG, add_special_tokens=False),
    )
    for i in range(len(verdict_ids), len(new)):
        if new[i - len(verdict_ids) : i] == verdict_ids:
            lp = torch.log_softmax(out.scores[i][0].float(), dim=-1)
            return float(lp[right_id] - lp[wrong_id])
    return FLOOR


VERIFIER = "verifier-tiny"


@pytest.fixture(scope="module")
def verifier_registry(module_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    task = get_task("arithmetic")
    replies = [
        (e, r)
        for e in task.examples("train", 4)
        for r in (f"{e.prompt[8:15]} = {e.meta['answer']}", str(e.meta["answer"] + 10))
    ]
    data = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(task, replies)))
    run_verifier(
        VerifierConfig(
            name=VERIFIER,
            data=str(data),
            registry=str(module_registry.root),
            output_dir=str(tmp_path_factory.mktemp("run")),
            full=True,
            max_steps=8,
            batch_size=4,
            learning_rate=1e-4,
            max_length=192,
            logging_steps=1,
            save_steps=100,
        )
    )
    assert module_registry.load(VERIFIER).manifest.kind == "verifier"
    return module_registry


def frozen(messages: list[dict[str, str]]) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(tuple(sorted(m.items())) for m in messages)


def question() -> tuple[list[dict[str, str]], list[str]]:
    e = get_task("arithmetic").examples("train", 1)[0]
    replies = [f"The sum is {e.meta['answer']}.", f"The sum is {e.meta['answer'] + 10}."]
    return get_task("arithmetic").messages(e), replies


def test_vllm_verifier_scores_match_transformers(verifier_registry: Registry) -> None:
    path = verifier_registry.path_of(VERIFIER)
    messages, (right, wrong) = question()
    scores = score_with_verifier(path, [(messages, right), (messages, wrong), (messages, right)])
    assert len(scores) == 3 and scores[0] == scores[2]
    assert scores[0] != FLOOR or scores[1] != FLOOR, "the tuned verifier never reached a verdict"
    reference = [reference_score(path, frozen(messages), r) for r in (right, wrong)]
    assert scores[:2] == pytest.approx(reference, abs=0.05)
    # the in-process scorer PPO uses (left-padded batched generate) agrees too, and its
    # reward is the verifier's p(right)
    in_process = TransformersVerifier(path, batch_size=2)([(messages, right), (messages, wrong)])
    assert in_process == pytest.approx(reference, abs=0.05)
    rewards = VerifierReward(path)([messages, messages], [right, wrong], [None, None])
    assert rewards == pytest.approx([1 / (1 + math.exp(-x)) for x in reference], abs=0.01)


def test_the_server_reranks_with_a_verifier(
    verifier_registry: Registry, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`--reward-model` naming a verifier entry: /v1/rewards and Best-of-N score with the
    verifier's generating engine, and agree with transformers."""
    import httpx
    import openai

    from loadtests.servers import start_bonserve

    path = verifier_registry.path_of(VERIFIER)
    messages, replies = question()
    srv = start_bonserve(
        tmp_path_factory.mktemp("verifier-server"),
        "--model",
        str(default_model),
        "--served-model-name",
        "smollm2-135m-instruct",
        "--registry",
        str(verifier_registry.root),
        "--reward-model",
        VERIFIER,
        "--enforce-eager",
    )
    try:
        body = httpx.post(
            srv.v1 + "/rewards",
            timeout=120,
            json={"items": [{"messages": messages, "response": r} for r in replies]},
        ).json()
        reference = [reference_score(path, frozen(messages), r) for r in replies]
        assert [d["reward"] for d in body["data"]] == pytest.approx(reference, abs=0.05)

        c = openai.OpenAI(base_url=srv.v1, api_key="unused", max_retries=0, timeout=300)
        r = c.chat.completions.create(
            model=srv.model,
            messages=messages,
            max_tokens=12,
            temperature=1.0,
            seed=3,
            extra_body={"best_of": 3},
        )
        extra = r.usage.model_extra["bonserve"]
        assert extra["candidates"] == 3 and extra["reward_model_tokens"] > 0
        reply = r.choices[0].message.content
        assert r.choices[0].model_extra["reward"] == pytest.approx(
            reference_score(path, frozen(messages), reply), abs=0.05
        )
        models = httpx.get(srv.v1 + "/models", timeout=30).json()["data"]
        served = next(m for m in models if m["id"] == "smollm2-135m-instruct")
        assert json.dumps(served).count(VERIFIER) >= 1, served
    finally:
        srv.stop()

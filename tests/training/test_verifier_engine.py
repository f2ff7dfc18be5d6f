"""The generative verifier scored by the real vLLM engine, against a transformers reference.

A verifier is trained here (the library call of `bonserve train verifier`) for a few
full-weight steps on verifier rows of 4 arithmetic prompts: far too few to check sums,
enough that its greedy check reaches " Verdict:". The test is the plumbing the benchmarks
rely on: vLLM's score of each reply equals the log p(" right") - log p(" wrong") that
transformers computes at the verdict token of its own greedy check (token ids, not decoded
strings), and repeated replies are scored once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.registry import Registry
from core.verifier import FLOOR, MAX_CHECK_TOKENS, RIGHT, VERDICT, WRONG, check_messages
from training.tasks import get_task
from training.verifier import run as run_verifier
from training.verifier import score_with_verifier, sft_rows
from training.verifier_config import VerifierConfig

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


def reference_score(path: Path, messages: list[dict[str, str]], reply: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(
        check_messages(messages, reply), add_generation_prompt=True, return_tensors="pt", return_dict=True
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


def test_vllm_verifier_scores_match_transformers(tmp_registry: Registry, tmp_path: Path) -> None:
    task = get_task("arithmetic")
    examples = task.examples("train", 4)
    replies = [
        (e, r)
        for e in examples
        for r in (f"{e.prompt[8:15]} = {e.meta['answer']}", str(e.meta["answer"] + 10))
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(task, replies)))
    run_verifier(
        VerifierConfig(
            name="verifier-tiny",
            data=str(data),
            registry=str(tmp_registry.root),
            full=True,
            max_steps=8,
            batch_size=4,
            learning_rate=1e-4,
            max_length=192,
            logging_steps=1,
            save_steps=100,
        )
    )
    path = tmp_registry.load("verifier-tiny").path

    e = examples[0]
    messages = task.messages(e)
    right, wrong = f"The sum is {e.meta['answer']}.", f"The sum is {e.meta['answer'] + 10}."
    scores = score_with_verifier(path, [(messages, right), (messages, wrong), (messages, right)])
    assert len(scores) == 3 and scores[0] == scores[2]
    assert scores[0] != FLOOR or scores[1] != FLOOR, "the tuned verifier never reached a verdict"
    for reply, got in ((right, scores[0]), (wrong, scores[1])):
        assert got == pytest.approx(reference_score(path, messages, reply), abs=0.05)

"""The generative verifier's layout: worked checks, training rows, and the verdict score."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.verifier import FLOOR, RIGHT, VERDICT, WRONG, check_messages, verdict_score
from training.tasks import Example, get_task
from training.verifier import check_target, sft_rows

ROOT = Path(__file__).resolve().parents[2]
arith = get_task("arithmetic")


def ex(a: int, b: int, i: int = 0) -> Example:
    return Example(
        id=f"arithmetic-train-{i:05d}",
        prompt=f"What is {a} + {b}? Reply with just the number.",
        meta={"a": a, "b": b, "answer": a + b},
    )


@pytest.mark.parametrize("a,b", [(98, 15), (10, 10), (45, 55), (99, 99), (31, 47), (19, 81)])
def test_worked_check_steps_are_true_one_digit_sums(a: int, b: int) -> None:
    text = arith.worked_check({"a": a, "b": b, "answer": a + b}, f"{a} + {b} = 7")
    m = re.fullmatch(
        r"(\d) \+ (\d) = (\d+), carry (\d)\. (\d) \+ (\d) \+ (\d) = (\d+)\. So (\d+) \+ (\d+) = (\d+)\. "
        r"The reply says 7\.",
        text,
    )
    assert m, text
    u1, u2, ones, carry, t1, t2, c2, tens, x, y, total = map(int, m.groups())
    # Independent of the code under test: digits by string slicing, the sum by Python.
    assert (u1, u2, t1, t2) == (int(str(a)[1]), int(str(b)[1]), int(str(a)[0]), int(str(b)[0]))
    assert ones == u1 + u2 and carry == c2 == (1 if ones >= 10 else 0)
    assert tens == t1 + t2 + carry and (x, y, total) == (a, b, a + b)
    assert total == 10 * tens + ones % 10


@pytest.mark.parametrize(
    "reply,said",
    [
        ("98 + 15 = 113", "113"),
        ("The answer is 113.0", "113"),
        ("I don't know", "no number"),
        ("98 + 15 = 12.5", "12.5"),
    ],
)
def test_worked_check_quotes_the_answer_the_gold_parser_reads(reply: str, said: str) -> None:
    assert arith.worked_check({"a": 98, "b": 15, "answer": 113}, reply).endswith(f"The reply says {said}.")


def test_check_target_ends_with_the_gold_verdict() -> None:
    e = ex(98, 15)
    assert check_target(arith, e, "98 + 15 = 113").endswith(f"{VERDICT}{RIGHT}")
    assert check_target(arith, e, "98 + 15 = 103").endswith(f"{VERDICT}{WRONG}")
    assert check_target(arith, e, "113 apples").endswith(f"{VERDICT}{RIGHT}")


def test_sft_rows_are_prompt_completion_with_the_reply_under_review() -> None:
    rows = sft_rows(arith, [(ex(20, 30), "20 + 30 = 50"), (ex(20, 30), "60")])
    assert [r["label"] for r in rows] == [1.0, 0.0]
    user = rows[1]["prompt"][0]["content"]
    assert "What is 20 + 30?" in user and user.endswith("Reply: 60")
    assert rows[1]["completion"][0]["role"] == "assistant"
    assert rows[1]["completion"][0]["content"].endswith("The reply says 60. Verdict: wrong")


def test_a_task_without_a_worked_check_cannot_train_a_verifier() -> None:
    sorting = get_task("sorting")
    example = sorting.examples("train", 1)[0]
    assert check_target(sorting, example, "[1, 2]") is None
    with pytest.raises(ValueError, match="no worked check"):
        sft_rows(sorting, [(example, "[1, 2]")])


def test_check_messages_quote_the_last_user_turn() -> None:
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "What is 1 + 2?"},
    ]
    (turn,) = check_messages(conv, "  3 \n")
    assert turn["role"] == "user" and "Question: What is 1 + 2?\nReply: 3" in turn["content"]


def test_verdict_score_reads_the_token_after_the_verdict() -> None:
    tokens = ["So", " 3", ".", " Ver", "dict", ":", " right", "<end>"]
    tops = [{t: -0.1} for t in tokens]
    tops[6] = {RIGHT: -0.2, WRONG: -2.5, " maybe": -3.0}
    assert verdict_score(tokens, tops) == pytest.approx(2.3)
    tops[6] = {WRONG: -0.01}  # " right" outside the top log-probs: floored, then clipped
    assert verdict_score(tokens, tops) == pytest.approx(FLOOR + 0.01)


def test_a_check_without_a_verdict_scores_the_floor() -> None:
    tokens = ["So", " 3", ".", "<end>"]
    assert verdict_score(tokens, [{t: 0.0} for t in tokens]) == FLOOR
    assert verdict_score([], []) == FLOOR


def test_verifier_data_keeps_validation_prompts_out(tmp_path: Path) -> None:
    train = arith.examples("train", 6)
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(
            json.dumps(
                {"id": e.id, "prompt": arith.messages(e), "samples": [str(e.meta["answer"]), "7", "7"]}
            )
            + "\n"
            for e in train
        )
    )
    out = tmp_path / "rows.jsonl"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/verifier_data.py"),
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--exclude-from",
        "2",
        "--exclude-to",
        "4",
        "--max-right-ratio",
        "1",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = {r["id"] for r in rows}
    assert ids == {train[i].id for i in (0, 1, 4, 5)}
    assert len(rows) == 8  # one right and one (deduplicated) wrong reply per kept prompt
    for r in rows:
        e = next(x for x in train if x.id == r["id"])
        reply = r["prompt"][0]["content"].rsplit("Reply: ", 1)[1]
        assert r["label"] == (1.0 if reply == str(e.meta["answer"]) else 0.0)


def test_a_verifier_trains_every_weight(tmp_path: Path) -> None:
    from core.flags import ConfigError
    from training.verifier_config import VerifierConfig

    with pytest.raises(ConfigError, match="--full"):
        VerifierConfig(name="v", data="rows.jsonl")
    with pytest.raises(ConfigError, match="unknown task"):
        VerifierConfig(name="v", data="rows.jsonl", full=True, task="algebra")


def test_the_trainer_refuses_rows_that_are_not_checks(tmp_path: Path) -> None:
    from training.data import DataError
    from training.verifier import run
    from training.verifier_config import VerifierConfig

    data = tmp_path / "sft.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "What is 1 + 2?"}],
        "completion": [{"role": "assistant", "content": "3"}],
    }
    data.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="not verifier rows"):
        run(VerifierConfig(name="v", data=str(data), full=True, registry=str(tmp_path / "reg")))
    good = sft_rows(arith, [(ex(20, 30), "50")])[0]
    data.write_text(json.dumps({k: good[k] for k in ("prompt", "completion")}) + "\n")
    from training.verifier import is_check_row

    assert is_check_row(good)

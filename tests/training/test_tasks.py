"""Verifiable tasks: fixed disjoint splits, and gold verifiers checked on realistic outputs."""

from __future__ import annotations

import json
import re

import pytest

from training.tasks import SPLITS, TASKS, Example, Task, get_task
from training.tasks.arithmetic import parse_answer
from training.tasks.constraints import check, words
from training.tasks.sorting import parse_list

# --- registry and splits -------------------------------------------------------------------


def test_registry_lists_the_builtin_tasks() -> None:
    assert set(TASKS) >= {"arithmetic", "constraints", "sorting"}
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert task.name == name
        assert get_task(name) is task


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'arith'.*arithmetic, constraints, sorting"):
        get_task("arith")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_deterministic_unique_and_disjoint(name: str) -> None:
    task = get_task(name)
    train, heldout = task.examples("train"), task.examples("heldout")
    assert len(train) == task.sizes["train"] and len(heldout) == task.sizes["heldout"]
    assert task.examples("train") == train and task.examples("heldout") == heldout
    for split in (train, heldout):
        assert len({ex.prompt for ex in split}) == len(split)
    ids = [ex.id for ex in train + heldout]
    assert len(set(ids)) == len(ids)
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in heldout}


def test_arithmetic_heldout_is_300_and_never_shares_a_sum_with_train() -> None:
    task = get_task("arithmetic")
    heldout = task.examples("heldout")
    assert len(heldout) == 300 and len(task.examples("train")) >= 2000
    pair = lambda ex: frozenset((ex.meta["a"], ex.meta["b"]))  # noqa: E731  (a + b == b + a)
    assert not {pair(ex) for ex in task.examples("train")} & {pair(ex) for ex in heldout}
    for ex in heldout:
        a, b = ex.meta["a"], ex.meta["b"]
        assert 10 <= a <= 99 and 10 <= b <= 99 and ex.meta["answer"] == a + b
        assert ex.prompt == f"What is {a} + {b}? Reply with just the number."


def test_sorting_train_never_repeats_a_heldout_set_of_numbers() -> None:
    task = get_task("sorting")
    key = lambda ex: tuple(sorted(ex.meta["numbers"]))  # noqa: E731
    assert not {key(ex) for ex in task.examples("train")} & {key(ex) for ex in task.examples("heldout")}


def test_heldout_split_is_pinned() -> None:
    """Changing a seed or the sampler silently changes every held-out number: fail loudly."""
    first = get_task("arithmetic").examples("heldout", 3)
    assert [ex.prompt for ex in first] == [
        "What is 82 + 18? Reply with just the number.",
        "What is 58 + 90? Reply with just the number.",
        "What is 92 + 30? Reply with just the number.",
    ]
    assert first[0] == Example(
        id="arithmetic-heldout-00000", prompt=first[0].prompt, meta={"a": 82, "b": 18, "answer": 100}
    )


def test_n_takes_a_prefix_and_bad_arguments_are_refused() -> None:
    task = get_task("sorting")
    assert task.examples("train", 5) == task.examples("train")[:5]
    assert task.examples("heldout", 0) == []
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'heldout'"):
        task.examples("test")
    with pytest.raises(ValueError, match="has 200 examples; asked for 201"):
        task.examples("heldout", 201)
    with pytest.raises(ValueError, match="asked for -1"):
        task.examples("train", -1)
    assert SPLITS == ("train", "heldout")


def test_examples_are_frozen_and_hashable_and_messages_are_openai_chat() -> None:
    task = get_task("arithmetic")
    ex = task.examples("heldout", 1)[0]
    with pytest.raises(AttributeError):
        ex.prompt = "x"  # type: ignore[misc]
    assert hash(ex) == hash(Example(ex.id, ex.prompt, dict(ex.meta)))
    assert task.messages(ex) == [{"role": "user", "content": ex.prompt}]


def test_callers_mutating_meta_do_not_change_the_split() -> None:
    task = get_task("constraints")
    task.examples("heldout", 1)[0].meta["constraints"].clear()
    assert task.examples("heldout", 1)[0].meta["constraints"]


# --- arithmetic verifier -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "12 + 35 = 47",
        "The answer is 47.",
        "47",
        " 47 \n",
        "12 + 35 = 47\n\nThis is the sum of 12 and 35.",
        "12 + 35 = 47. The numbers 12 and 35 add up to it.",
        "Sure! 12 + 35 equals 47.",
        "**47**",
        "The sum is: 47.0",
        "\\boxed{47}",
        "12+35=47",
    ],
)
def test_arithmetic_reward_accepts_realistic_correct_outputs(text: str) -> None:
    ex = Example("t", "What is 12 + 35? Reply with just the number.", {"a": 12, "b": 35, "answer": 47})
    assert get_task("arithmetic").reward(ex, text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "12 + 35 = 50",
        "12 + 35 = 50\n\nThis is the sum of 12 and 47.",  # the right number, but not as the answer
        "",
        "I don't know.",
        "12 + 35 =",
        "The answer is 46.",
        "47 is close, but the answer is 48.",
        "12 + 35",  # an echo is not an answer: the last number is 35
    ],
)
def test_arithmetic_reward_rejects_wrong_or_missing_answers(text: str) -> None:
    ex = Example("t", "What is 12 + 35? Reply with just the number.", {"a": 12, "b": 35, "answer": 47})
    assert get_task("arithmetic").reward(ex, text) == 0.0


def test_parse_answer_handles_separators_and_signs() -> None:
    assert parse_answer("1,234") == 1234
    assert parse_answer("It is 1,234.") == 1234
    assert parse_answer("a = -5") == -5
    assert parse_answer("12, 35 and 47") == 47  # ", " is a list, not a thousands separator
    assert parse_answer("no digits here") is None


def test_a_first_number_parser_would_fail_the_echo_case() -> None:
    """The brief's finding: the model echoes 'a + b = s', so the first number is an operand."""
    task = get_task("arithmetic")
    for ex in task.examples("heldout", 50):
        a, b, s = ex.meta["a"], ex.meta["b"], ex.meta["answer"]
        echo = f"{a} + {b} = {s}\n\nThis is the sum of {a} and {b}."
        assert task.reward(ex, echo) == 1.0
        assert task.reward(ex, f"{a} + {b} = {s + 1}") == 0.0
        assert task.reward(ex, str(s)) == 1.0
        first_number = int(re.search(r"\d+", echo).group())  # type: ignore[union-attr]
        assert first_number != s


# --- constraints verifier ------------------------------------------------------------------


def test_word_counting_ignores_punctuation_and_keeps_contractions_whole() -> None:
    assert words("Don't stop -- the well-known sea, at 5 a.m.!") == [
        "Don't",
        "stop",
        "the",
        "well-known",
        "sea",
        "at",
        "5",
        "a",
        "m",
    ]
    assert check({"type": "word_count", "n": 5}, "The moon is very bright.")
    assert not check({"type": "word_count", "n": 5}, "The moon is bright.")


def test_each_rule_accepts_and_rejects() -> None:
    assert check({"type": "lowercase"}, "the quiet sea, 42.")
    assert not check({"type": "lowercase"}, "The quiet sea.")
    assert not check({"type": "lowercase"}, "42")  # no letters: not an answer in lowercase
    assert check({"type": "include_word", "word": "blue"}, "A Blue whale.")
    assert not check({"type": "include_word", "word": "blue"}, "A bluebird.")
    assert check({"type": "end_with", "word": "calm"}, "The sea is calm.")
    assert not check({"type": "end_with", "word": "calm"}, "Calm is the sea.")
    rule = {"type": "json_keys", "keys": ["name", "color"]}
    assert check(rule, '{"name": "sky", "color": "blue"}')
    assert check(rule, '```json\n{"color": "blue", "name": "sky"}\n```')
    assert not check(rule, '{"name": "sky"}')
    assert not check(rule, '{"name": "sky", "color": "blue", "extra": 1}')
    assert not check(rule, '["name", "color"]')
    assert not check(rule, 'Here it is: {"name": "sky", "color": "blue"}')
    assert not check(rule, "")
    with pytest.raises(ValueError, match="unknown constraint type 'rhyme'"):
        check({"type": "rhyme"}, "x")


def test_reward_is_the_fraction_of_rules_met() -> None:
    ex = Example(
        "t",
        "p",
        {
            "constraints": [
                {"type": "word_count", "n": 4},
                {"type": "lowercase"},
                {"type": "include_word", "word": "sea"},
            ]
        },
    )
    task = get_task("constraints")
    assert task.reward(ex, "the sea is calm") == 1.0
    assert task.reward(ex, "The sea is calm") == pytest.approx(2 / 3)
    assert task.reward(ex, "The ocean is calm and wide") == 0.0


def _obey(meta: dict) -> str:
    """A completion that meets every rule of `meta`: proves each generated example solvable."""
    rules = {r["type"]: r for r in meta["constraints"]}
    if "json_keys" in rules:
        word = rules.get("include_word", {}).get("word", "nice")
        return json.dumps({k: f"a {word} thing" for k in rules["json_keys"]["keys"]})
    n = rules["word_count"]["n"] if "word_count" in rules else 8
    body = [rules["include_word"]["word"]] if "include_word" in rules else []
    tail = [rules["end_with"]["word"]] if "end_with" in rules else []
    text = " ".join(["Here"] + body + ["word"] * (n - 1 - len(body) - len(tail)) + tail) + "."
    return text.lower() if "lowercase" in rules else text


def test_every_generated_constraint_example_is_satisfiable_and_checked() -> None:
    task = get_task("constraints")
    kinds = set()
    for ex in task.examples("heldout") + task.examples("train", 300):
        rules = ex.meta["constraints"]
        assert 1 <= len(rules) <= 3
        kinds.update(r["type"] for r in rules)
        assert task.reward(ex, _obey(ex.meta)) == 1.0, ex
        assert task.reward(ex, "") == 0.0
        for r in rules:  # every rule is stated in the prompt
            assert str(r.get("word", r.get("n", ""))) in ex.prompt
    assert kinds == {"word_count", "lowercase", "include_word", "end_with", "json_keys"}


# --- sorting verifier ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("7, 19, 42", [7, 19, 42]),
        ("7, 19, 42.", [7, 19, 42]),
        ("The sorted list is: 7, 19, 42", [7, 19, 42]),
        ("42, 7, 19 sorted in ascending order is 7, 19, 42.", [7, 19, 42]),
        ("7, 19 and 42", [7, 19, 42]),
        ("7 19 42", [7, 19, 42]),
        ("7\n19\n42", [7, 19, 42]),
        ("7, 19, 42 (3 numbers)", [7, 19, 42]),
        ("**7, 19, 42**", [7, 19, 42]),
        ("42", [42]),
        ("", None),
    ],
)
def test_parse_list(text: str, parsed: list[int] | None) -> None:
    assert parse_list(text) == parsed


def test_sorting_reward_on_every_heldout_example() -> None:
    task = get_task("sorting")
    for ex in task.examples("heldout"):
        nums, answer = ex.meta["numbers"], ex.meta["answer"]
        assert answer == sorted(nums) and 3 <= len(nums) <= 6 and len(set(nums)) == len(nums)
        assert task.reward(ex, ", ".join(map(str, answer))) == 1.0
        assert task.reward(ex, f"{', '.join(map(str, nums))} -> {', '.join(map(str, answer))}") == 1.0
        assert task.reward(ex, ", ".join(map(str, reversed(answer)))) == 0.0
        assert task.reward(ex, ", ".join(map(str, answer[:-1]))) == 0.0  # one missing
        assert task.reward(ex, ", ".join(map(str, [*answer, 100]))) == 0.0  # one extra

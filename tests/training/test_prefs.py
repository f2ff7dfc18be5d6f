"""The `--pairs all` rule of `data prefs` (pure functions; no engine)."""

from __future__ import annotations

import itertools

from training.prefs import all_pairs, make_pairs
from training.prompts import Prompt
from training.rm import trained_for


def test_all_pairs_is_every_better_worse_combination_of_distinct_texts() -> None:
    texts = ["47", "46", "47", "48", "The answer is 47"]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0]
    # An independent enumeration: distinct texts by first occurrence, then every ordered pair.
    firsts = [i for i, t in enumerate(texts) if texts.index(t) == i]
    expected = sorted((i, j) for i, j in itertools.product(firsts, firsts) if scores[i] > scores[j])
    assert all_pairs(texts, scores) == expected == [(0, 1), (0, 3), (4, 1), (4, 3)]
    assert all_pairs(["a", "b"], [0.5, 0.5]) == []  # ties give nothing


def test_make_pairs_all_rule_caps_and_records_policy_and_temperature() -> None:
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    prompts = [Prompt("a", msgs), Prompt("b", msgs)]
    samples = [["3", "4", "5", "3", " "], ["3", "3", "3", "3", "3"]]
    gold = [[1.0, 0.0, 0.0, 1.0, 0.0], [1.0] * 5]
    rows, stats = make_pairs(prompts, samples, gold, "base", rule="all", temperature=0.8)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("3", "4"),
        ("3", "5"),
    ]
    assert {r["policy"] for r in rows} == {"base"} and {r["temperature"] for r in rows} == {0.8}
    assert stats["pairs"] == 2 and stats["prompts_with_pairs"] == 1 and stats["ties_dropped"] == 1
    assert stats["empty_completions"] == 1
    capped, _ = make_pairs(prompts, samples, gold, "base", rule="all", max_per_prompt=1, seed=3)
    assert len(capped) == 1 and capped[0]["chosen"][0]["content"] == "3"


def test_reward_model_records_the_policy_and_temperature_it_was_trained_for() -> None:
    rows = [{"policy": "base", "temperature": 0.8}, {"policy": "base", "temperature": 0.8}]
    assert trained_for(rows, None) == {
        "policy": "base",
        "temperature": 0.8,
        "policies": ["base"],
        "temperatures": [0.8],
    }
    mixed = [*rows, {"policy": "sft", "temperature": 1.0}]
    assert trained_for(mixed, None)["policy"] is None  # mixed data names no single policy ...
    assert trained_for(mixed, "sft")["policy"] == "sft"  # ... unless --for-policy does
    assert trained_for([{"chosen": "x"}], None) == {
        "policy": None,
        "temperature": None,
        "policies": [],
        "temperatures": [],
    }

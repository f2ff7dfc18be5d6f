"""Instructions with checkable format constraints (IFEval-style, small and deterministic).

Each example asks for a sentence (or a JSON object) about a topic under one to three rules;
`meta["constraints"]` lists them as dicts with a `type` and its parameters, and the reward
is the fraction of rules the completion satisfies, so a partly obedient answer earns
partial credit (useful signal for BoN and PPO). The rules:

- word_count   "in exactly N words"     words are runs of letters/digits, "well-known"
                                        and "don't" count once, punctuation never counts
- lowercase    "in all lowercase"       at least one letter, and no uppercase letter
- include_word "include the word W"     W as a whole word, case-insensitive
- end_with     "end with the word W"    last word is W, ignoring trailing punctuation
- json_keys    "a JSON object with exactly the keys K1 and K2"
                                        json.loads gives a dict with exactly those keys;
                                        one surrounding ``` fence is tolerated because
                                        chat models add it by habit, and it hides nothing

json_keys is never combined with word_count or end_with (a JSON object has no sentence to
count or end); include_word and end_with never use the same word.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, ClassVar

from training.tasks.base import Example, Task

TOPICS = (
    "the ocean",
    "a mountain",
    "coffee",
    "the moon",
    "a library",
    "winter",
    "a bicycle",
    "the city at night",
    "a garden",
    "friendship",
    "the desert",
    "a thunderstorm",
    "music",
    "a train journey",
    "the forest",
    "breakfast",
    "a lighthouse",
    "autumn leaves",
    "a river",
    "the stars",
    "a small village",
    "rain",
    "a cat",
    "the sunrise",
    "an old bridge",
    "snow",
    "a market",
    "the wind",
    "a candle",
    "a football match",
)
WORDS = (
    "blue",
    "quiet",
    "bright",
    "gentle",
    "ancient",
    "golden",
    "silver",
    "warm",
    "cold",
    "happy",
    "green",
    "calm",
    "tiny",
    "wild",
    "soft",
    "early",
    "simple",
    "strong",
    "sweet",
    "brave",
)
KEY_PAIRS = (
    ("name", "color"),
    ("title", "year"),
    ("city", "country"),
    ("topic", "summary"),
    ("animal", "sound"),
    ("fruit", "taste"),
    ("item", "price"),
    ("subject", "mood"),
    ("place", "weather"),
    ("question", "answer"),
)

# A word: letters/digits, joined by inner apostrophes or hyphens ("don't", "well-known").
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


# --- the rules: one checker per type, each (completion, rule) -> bool ----------------------


def _word_count(text: str, rule: dict[str, Any]) -> bool:
    return len(words(text)) == rule["n"]


def _lowercase(text: str, rule: dict[str, Any]) -> bool:
    return any(c.isalpha() for c in text) and text == text.lower()


def _include_word(text: str, rule: dict[str, Any]) -> bool:
    return rule["word"].lower() in {w.lower() for w in words(text)}


def _end_with(text: str, rule: dict[str, Any]) -> bool:
    found = words(text)
    return bool(found) and found[-1].lower() == rule["word"].lower()


def _json_keys(text: str, rule: dict[str, Any]) -> bool:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and set(value) == set(rule["keys"])


CHECKS = {
    "word_count": _word_count,
    "lowercase": _lowercase,
    "include_word": _include_word,
    "end_with": _end_with,
    "json_keys": _json_keys,
}


def check(rule: dict[str, Any], completion: str) -> bool:
    """Whether `completion` satisfies one rule of `meta["constraints"]`."""
    if rule["type"] not in CHECKS:
        raise ValueError(f"unknown constraint type {rule['type']!r}: known are {sorted(CHECKS)}")
    return CHECKS[rule["type"]](completion, rule)


# --- the prompts -------------------------------------------------------------------------


def _instruction(rule: dict[str, Any]) -> str:
    kind = rule["type"]
    if kind == "lowercase":
        return "Use only lowercase letters, no capitals."
    if kind == "include_word":
        return f'Include the word "{rule["word"]}".'
    if kind == "end_with":
        return f'End your reply with the word "{rule["word"]}".'
    raise ValueError(f"{kind!r} is part of the opening sentence, not an extra instruction")


class ConstraintsTask(Task):
    name = "constraints"
    sizes: ClassVar[dict[str, int]] = {"train": 1000, "heldout": 200}
    seeds: ClassVar[dict[str, int]] = {"train": 20261201, "heldout": 20261202}

    def sample(self, rng: random.Random) -> tuple[Any, str, dict[str, Any]]:
        topic = rng.choice(TOPICS)
        rules: list[dict[str, Any]] = []
        if rng.random() < 0.25:
            keys = list(rng.choice(KEY_PAIRS))
            rules.append({"type": "json_keys", "keys": keys})
            opening = (
                f'Describe {topic} as a JSON object with exactly the keys "{keys[0]}" '
                f'and "{keys[1]}". Reply with only the JSON object.'
            )
            extras = ["lowercase", "include_word"]
        else:
            n = rng.randint(5, 15)
            if rng.random() < 0.5:
                rules.append({"type": "word_count", "n": n})
                opening = f"Write a sentence about {topic} in exactly {n} words."
            else:
                opening = f"Write a sentence about {topic}."
            extras = ["lowercase", "include_word", "end_with"]
        # One or two extra rules; at least one rule in total.
        k = rng.randint(0 if rules else 1, 2)
        chosen_words = rng.sample(WORDS, 2)
        for kind in sorted(rng.sample(extras, k), key=extras.index):
            rule: dict[str, Any] = {"type": kind}
            if kind == "include_word":
                rule["word"] = chosen_words[0]
            elif kind == "end_with":
                rule["word"] = chosen_words[1]
            rules.append(rule)
        prompt = " ".join(
            [opening] + [_instruction(r) for r in rules if r["type"] not in ("json_keys", "word_count")]
        )
        return prompt, prompt, {"topic": topic, "constraints": rules}

    def reward(self, example: Example, completion: str) -> float:
        rules = example.meta["constraints"]
        return sum(check(rule, completion) for rule in rules) / len(rules)

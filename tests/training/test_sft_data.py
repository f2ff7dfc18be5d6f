"""`bonserve data sft`: preference pairs -> SFT rows on the chosen side (rejection sampling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import sft_data
from training.data import DataError, DataFormat, load_sft_data, write_jsonl
from training.scripts.sft_data import main as data_sft
from training.sft_data_config import SFTDataConfig


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


PAIRS = [
    {
        "prompt": [_user("What is 2 + 3?")],
        "chosen": [_bot("5")],
        "rejected": [_bot("6")],
        "id": "a",
        "chosen_score": 1.0,
        "rejected_score": 0.0,
    },
    {
        "prompt": [_user("What is 4 + 4?")],
        "chosen": [_bot("9")],
        "rejected": [_bot("it is 7")],
        "id": "b",
        "chosen_score": 0.5,
        "rejected_score": 0.0,
    },
]


def test_conversational_pairs_become_prompt_completion_messages(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    code = data_sft(
        [
            "--from-prefs",
            str(tmp_path / "prefs.jsonl"),
            "--out",
            str(tmp_path / "sft.jsonl"),
            "--min-score",
            "1",
        ]
    )
    assert code == 0
    rows, fmt = load_sft_data(tmp_path / "sft.jsonl")
    assert fmt is DataFormat.CONVERSATIONAL
    assert [dict(r) for r in rows] == [
        {"prompt": [_user("What is 2 + 3?")], "completion": [_bot("5")], "id": "a", "chosen_score": 1.0}
    ]


def test_without_min_score_every_pair_is_kept() -> None:
    rows = sft_data.chosen_as_sft(PAIRS, DataFormat.CONVERSATIONAL)
    assert [r["completion"][0]["content"] for r in rows] == ["5", "9"]


def test_implicit_prompt_pairs() -> None:
    standard = [{"chosen": "Q: 2+3? A: 5", "rejected": "Q: 2+3? A: 6"}]
    assert sft_data.chosen_as_sft(standard, DataFormat.IMPLICIT_PROMPT) == [
        {"prompt": "Q: 2+3? A: ", "completion": "5"}
    ]
    chats = [{"chosen": [_user("2+3?"), _bot("5")], "rejected": [_user("2+3?"), _bot("6")]}]
    assert sft_data.chosen_as_sft(chats, DataFormat.IMPLICIT_PROMPT_CONVERSATIONAL) == [
        {"messages": [_user("2+3?"), _bot("5")]}
    ]


def test_min_score_needs_scores_and_some_survivor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unscored = [{k: v for k, v in row.items() if k != "chosen_score"} for row in PAIRS]
    write_jsonl(tmp_path / "unscored.jsonl", unscored)
    with pytest.raises(DataError, match=r"unscored.jsonl:1: --min-score needs a numeric 'chosen_score'"):
        sft_data.run(
            SFTDataConfig(
                from_prefs=str(tmp_path / "unscored.jsonl"), out=str(tmp_path / "x.jsonl"), min_score=1.0
            )
        )
    write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    code = data_sft(
        [
            "--from-prefs",
            str(tmp_path / "prefs.jsonl"),
            "--out",
            str(tmp_path / "x.jsonl"),
            "--min-score",
            "2",
        ]
    )
    assert code == 1 and "no row has chosen_score >= 2.0" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_bad_preference_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "q", "chosen": 3, "rejected": "r"}) + "\n")
    code = data_sft(["--from-prefs", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert code == 1
    assert "bad.jsonl:1: field 'chosen': expected a string, got int" in capsys.readouterr().err


def test_repeated_chosen_replies_of_all_pairs_become_one_row() -> None:
    msgs = [{"role": "user", "content": "1 + 2?"}]
    pairs = [
        {
            "prompt": msgs,
            "chosen": [{"role": "assistant", "content": "3"}],
            "rejected": [{"role": "assistant", "content": w}],
        }
        for w in ("4", "5", "6")
    ]
    pairs.append({**pairs[0], "chosen": [{"role": "assistant", "content": "1 + 2 = 3"}]})
    rows = sft_data.chosen_as_sft(pairs, DataFormat.CONVERSATIONAL)
    assert [r["completion"][0]["content"] for r in rows] == ["3", "1 + 2 = 3"]

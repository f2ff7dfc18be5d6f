"""Training data: TRL formats detected, every bad row reported with file, line and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from training.data import (
    DataError,
    DataFormat,
    data_hash,
    load_preference_data,
    load_rows,
    load_sft_data,
    validate_preference_rows,
    validate_sft_rows,
    write_jsonl,
)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


STANDARD = [
    {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
    {"prompt": "What is 4 + 4?", "chosen": "8", "rejected": "4 + 4 = 9"},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, _user("What is 2 + 3?")],
        "chosen": [_bot("5")],
        "rejected": [_bot("6")],
    },
]
IMPLICIT = [{"chosen": "Q: What is 2 + 3? A: 5", "rejected": "Q: What is 2 + 3? A: 6"}]
IMPLICIT_CONVERSATIONAL = [
    {"chosen": [_user("What is 2 + 3?"), _bot("5")], "rejected": [_user("What is 2 + 3?"), _bot("6")]},
]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _raw(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "fmt"),
    [
        (STANDARD, "standard"),
        (CONVERSATIONAL, "conversational"),
        (IMPLICIT, "implicit_prompt"),
        (IMPLICIT_CONVERSATIONAL, "implicit_prompt_conversational"),
    ],
)
def test_preference_formats_are_detected(tmp_path: Path, rows: list[dict], fmt: str) -> None:
    loaded, found = load_preference_data(_jsonl(tmp_path / "p.jsonl", rows))
    assert loaded == rows
    assert found == fmt and isinstance(found, DataFormat)


def test_sft_formats_are_detected(tmp_path: Path) -> None:
    messages = [{"messages": [_user("hi"), _bot("hello")], "id": 1}]
    assert load_sft_data(_jsonl(tmp_path / "a.jsonl", messages))[1] == DataFormat.CONVERSATIONAL
    pc = [{"prompt": "What is 2 + 3?", "completion": "5"}]
    assert load_sft_data(_jsonl(tmp_path / "b.jsonl", pc))[1] == DataFormat.STANDARD
    pc_conv = [{"prompt": [_user("What is 2 + 3?")], "completion": [_bot("5")]}]
    assert validate_sft_rows(pc_conv, "mem") == DataFormat.CONVERSATIONAL


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    rows = [{**STANDARD[0], "id": "a-1", "score_chosen": 1.0}]
    loaded, fmt = load_preference_data(_jsonl(tmp_path / "p.jsonl", rows))
    assert fmt == "standard" and loaded[0]["id"] == "a-1"


# --- file kinds ----------------------------------------------------------------------------


def test_parquet_roundtrip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(CONVERSATIONAL + CONVERSATIONAL), path)
    rows, fmt = load_preference_data(path)
    assert rows == CONVERSATIONAL + CONVERSATIONAL and fmt == "conversational"
    assert data_hash(rows) == data_hash(CONVERSATIONAL + CONVERSATIONAL)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = [*STANDARD, {"prompt": "x", "chosen": "", "rejected": "y"}]
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(bad), path)
    with pytest.raises(DataError, match=r"^.*prefs\.parquet: row 3: field 'chosen': is empty$"):
        load_preference_data(path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read Parquet"):
        load_rows(tmp_path / "junk.parquet")


def test_hf_dataset_directory(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    Dataset.from_list(STANDARD).save_to_disk(str(tmp_path / "ds"))
    rows, fmt = load_preference_data(tmp_path / "ds")
    assert rows == STANDARD and fmt == "standard"

    sft = [{"messages": [_user("hi"), _bot("hello")]}]
    DatasetDict({"train": Dataset.from_list(sft), "test": Dataset.from_list(sft * 2)}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert load_sft_data(tmp_path / "dd") == (sft, "conversational")

    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: not a dataset directory written by save_to_disk"):
        load_rows(tmp_path / "plain")


def test_json_array_and_hf_style_json_lines(tmp_path: Path) -> None:
    array = _raw(tmp_path / "a.json", json.dumps(STANDARD, indent=2))
    assert load_rows(array) == STANDARD
    lines = _jsonl(tmp_path / "b.json", STANDARD)  # what Dataset.to_json writes
    assert load_rows(lines) == STANDARD


def test_missing_empty_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows \(empty file\)"):
        load_rows(_raw(tmp_path / "empty.jsonl", ""))
    with pytest.raises(DataError, match=r"blank\.jsonl: no rows"):
        load_rows(_raw(tmp_path / "blank.jsonl", "\n  \n\n"))
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_rows(_raw(tmp_path / "d.csv", "a,b\n"))
    with pytest.raises(DataError, match=r"^mem: no rows$"):
        validate_preference_rows([], "mem")
    with pytest.raises(DataError, match=r"^mem: no rows$"):
        validate_sft_rows([], "mem")


# --- JSONL errors: file, 1-based line, field -----------------------------------------------


def _error(tmp_path: Path, text: str, *, sft: bool = False) -> str:
    path = _raw(tmp_path / "data.jsonl", text)
    with pytest.raises(DataError) as info:
        (load_sft_data if sft else load_preference_data)(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    return message[len(str(tmp_path)) + 1 :]


def _lines(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    good = json.dumps(STANDARD[0])
    text = _lines(good, good, "", good, good, good, {"prompt": "p", "chosen": 5, "rejected": "x"})
    # the blank line 3 is skipped but counted: the bad row is on line 7
    assert _error(tmp_path, text) == "data.jsonl:7: field 'chosen': expected a string, got int"


def test_invalid_json_line(tmp_path: Path) -> None:
    good = json.dumps(STANDARD[0])
    msg = _error(tmp_path, _lines(good, good, '{"prompt": "p", "chosen": "a" "rejected": "b"}'))
    assert msg.startswith("data.jsonl:3: invalid JSON (Expecting ',' delimiter at column")
    assert _error(tmp_path, _lines(good, "[1, 2]")) == "data.jsonl:2: expected a JSON object, got list"
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(STANDARD[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid UTF-8"):
        load_rows(path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "field 'chosen': is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": "  "}, "field 'rejected': is empty"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt': is empty"),
        (
            {"prompt": "p", "chosen": "same", "rejected": "same"},
            "fields 'chosen' and 'rejected' are identical: the pair carries no preference",
        ),
        (
            {"prompt": None, "chosen": "a", "rejected": "b"},
            "field 'prompt': expected a string or a list of messages, got null",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "field 'rejected': expected a string, got list"),
        (
            {"prompt": [_user("q")], "chosen": "a", "rejected": "b"},
            "field 'chosen': expected a list of messages, got string",
        ),
        (
            {"prompt": [{"role": "bot", "content": "q"}], "chosen": [_bot("a")], "rejected": [_bot("b")]},
            "field 'prompt[0].role': expected one of 'system', 'user', 'assistant', got 'bot'",
        ),
        (
            {
                "prompt": [_user("q")],
                "chosen": [{"role": "assistant", "content": 5}],
                "rejected": [_bot("b")],
            },
            "field 'chosen[0].content': expected a string, got int",
        ),
        (
            {"prompt": [_user("q")], "chosen": [{"role": "assistant"}], "rejected": [_bot("b")]},
            "field 'chosen[0]': missing 'content'",
        ),
        (
            {"prompt": [_user("q")], "chosen": [_user("a")], "rejected": [_bot("b")]},
            "field 'chosen[0].role': expected one of 'assistant', got 'user'",
        ),
        (
            {"prompt": [_user("q")], "chosen": [_bot(" ")], "rejected": [_bot("b")]},
            "field 'chosen': the assistant reply is empty",
        ),
        (
            {"prompt": [], "chosen": [_bot("a")], "rejected": [_bot("b")]},
            "field 'prompt': is an empty list of messages",
        ),
        (
            {"prompt": [_user("q"), _bot("a")], "chosen": [_bot("a")], "rejected": [_bot("b")]},
            "field 'prompt': the prompt must end with a 'user' message, got 'assistant'",
        ),
        (
            {"prompt": [_user("q")], "chosen": [_bot("a")], "rejected": [_bot("a")]},
            "fields 'chosen' and 'rejected' are identical: the pair carries no preference",
        ),
        ({"chosen": "5", "rejected": "6"}, "fields 'chosen' and 'rejected' share no prompt"),
        (
            {"chosen": "Q: 2+3? A: 5", "rejected": "Q: 2+3? A: 55"},
            "fields 'chosen' and 'rejected': one is a prefix of the other",
        ),
        (
            {"chosen": [_user("q"), _bot("a")], "rejected": [_user("other"), _bot("b")]},
            "fields 'chosen' and 'rejected': without a 'prompt' field both chats must share every message",
        ),
        (
            {"chosen": [_user("q")], "rejected": [_user("q"), _bot("b")]},
            "field 'chosen': must end with a non-empty 'assistant' message",
        ),
        ({"chosen": [_bot("a")], "rejected": [_bot("b")]}, "field 'chosen': has no 'user' message"),
        ({"chosen": 1, "rejected": 2}, "field 'chosen': expected a string or a list of messages, got int"),
    ],
)
def test_bad_preference_rows(tmp_path: Path, row: dict, expected: str) -> None:
    # A good row first: each row's own error is reported before any format mismatch.
    msg = _error(tmp_path, _lines(STANDARD[0], row))
    assert msg.startswith(f"data.jsonl:2: {expected}"), msg


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    msg = _error(tmp_path, _lines(STANDARD[0], STANDARD[1], CONVERSATIONAL[0]))
    assert msg.startswith("data.jsonl:3: preference row in format 'conversational', but ")
    assert msg.endswith("data.jsonl:1 is 'standard': all rows must share one format")
    sft = _lines({"messages": [_user("q"), _bot("a")]}, {"prompt": [_user("q")], "completion": [_bot("a")]})
    assert "data.jsonl:2: SFT row in format 'prompt_completion_messages'" in _error(tmp_path, sft, sft=True)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": [_user("q")]}, "field 'messages': has no non-empty 'assistant' message"),
        ({"messages": [_user("q"), {"role": "tool", "content": "x"}]}, "field 'messages[1].role'"),
        ({"messages": [_user(["q"]), _bot("a")]}, "field 'messages[0].content': expected a string, got list"),
        ({"messages": "hi"}, "field 'messages': expected a list of messages, got string"),
        ({"messages": [_user("q"), _bot("a")], "prompt": "q"}, "has both 'messages' and 'prompt'"),
        ({"prompt": "q"}, "missing field 'completion'"),
        ({"text": "q"}, "missing field 'prompt'"),
        ({"prompt": "q", "completion": 3}, "field 'completion': expected a string, got int"),
        ({"prompt": "q", "completion": ""}, "field 'completion': is empty"),
        ({"prompt": {"q": 1}, "completion": "a"}, "field 'prompt': expected a string or a list of messages"),
    ],
)
def test_bad_sft_rows(tmp_path: Path, row: dict, expected: str) -> None:
    msg = _error(tmp_path, _lines({"messages": [_user("q"), _bot("a")]}, row), sft=True)
    assert msg.startswith(f"data.jsonl:2: {expected}"), msg


def test_in_memory_rows_are_numbered_from_one() -> None:
    with pytest.raises(DataError, match=r"^gen: row 2: field 'chosen': expected a string, got bool$"):
        validate_preference_rows([STANDARD[0], {**STANDARD[0], "chosen": True}], "gen")
    with pytest.raises(DataError, match=r"^<rows>: row 1: expected an object, got list$"):
        validate_preference_rows([["a"]])  # type: ignore[list-item]


def test_errors_are_value_errors_without_chained_tracebacks(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_rows(_raw(tmp_path / "x.jsonl", "{oops\n"))
    assert isinstance(info.value, DataError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- writing and hashing -------------------------------------------------------------------


def test_write_jsonl_roundtrips_unicode_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "out" / "prefs.jsonl"
    rows = [{"prompt": "Ça va? 日本", "chosen": "oui", "rejected": "non"}, *STANDARD]
    assert write_jsonl(path, rows) == path
    assert load_rows(path) == rows
    assert "日本" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert [p.name for p in path.parent.iterdir()] == ["prefs.jsonl"]

    with pytest.raises(DataError, match=r"row 2: not JSON-serialisable|cannot write rows as JSON"):
        write_jsonl(path, [STANDARD[0], {"bad": {1, 2}}])
    with pytest.raises(DataError, match="row 2: expected a dict, got list"):
        write_jsonl(path, [STANDARD[0], ["x"]])  # type: ignore[list-item]
    with pytest.raises(DataError, match="cannot write rows as JSON"):
        write_jsonl(path, [{"x": float("nan")}])
    assert load_rows(path) == rows  # the old file is untouched after every failed write
    assert [p.name for p in path.parent.iterdir()] == ["prefs.jsonl"]  # and no temp file left

    write_jsonl(path, STANDARD[:1])
    assert load_rows(path) == STANDARD[:1]


def test_data_hash_is_canonical_json() -> None:
    rows = [{"b": "x", "a": 1}]
    expected = hashlib.sha256(b'{"a":1,"b":"x"}\n').hexdigest()
    assert data_hash(rows) == expected
    assert data_hash([{"a": 1, "b": "x"}]) == expected  # key order does not matter
    assert data_hash(STANDARD) != data_hash(STANDARD[::-1])  # row order does
    assert data_hash(STANDARD) != data_hash([{**STANDARD[0], "chosen": "6"}, STANDARD[1]])
    assert data_hash([{"a": "é"}]) == hashlib.sha256('{"a":"é"}\n'.encode()).hexdigest()
    with pytest.raises(DataError, match="row 1: not JSON-serialisable"):
        data_hash([{"a": {1}}])


def test_data_hash_same_for_a_file_and_its_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", STANDARD)
    assert data_hash(load_rows(path)) == data_hash(STANDARD)

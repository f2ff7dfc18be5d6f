"""Prompt rows and prompt files: one check (`messages_of`) and one reader (`read_prompt_file`)
for `data prefs`, `train ppo`, `train grpo|rloo` and `bonserve loadtest`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.data import DataError, messages_of, write_jsonl
from training.prompts import Prompt, load_prompts, read_prompt_file

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hello?"}


@pytest.mark.parametrize(
    ("row", "messages"),
    [
        ({"prompt": "Say hi."}, [{"role": "user", "content": "Say hi."}]),
        ({"prompt": [SYSTEM, USER], "id": 3}, [SYSTEM, USER]),
        ({"messages": [USER], "max_tokens": 5}, [USER]),
        # only role and content are kept
        ({"prompt": [{**USER, "name": "bob"}]}, [USER]),
    ],
)
def test_messages_of_accepts_strings_and_messages(row: dict[str, Any], messages: list[dict]) -> None:
    assert messages_of(row, "f.jsonl:1") == messages


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("Say hi.", "f.jsonl:1: expected an object, got string"),
        ({"id": 1}, "f.jsonl:1: missing field 'prompt' (a string or messages) or 'messages'"),
        ({"prompt": "x", "messages": [USER]}, "has both 'prompt' and 'messages'"),
        ({"prompt": 3}, "field 'prompt': expected a string or a list of messages, got int"),
        ({"prompt": "   "}, "field 'prompt': is empty"),
        ({"prompt": []}, "field 'prompt': is an empty list of messages"),
        ({"prompt": ["hi"]}, "field 'prompt[0]': expected a message object, got string"),
        ({"prompt": [{"role": "user"}]}, "field 'prompt[0]': missing 'content'"),
        ({"prompt": [{"role": "bot", "content": "x"}]}, "field 'prompt[0].role': expected one of"),
        (
            {"prompt": [{"role": "user", "content": 1}]},
            "field 'prompt[0].content': expected a string, got int",
        ),
        ({"prompt": [SYSTEM]}, "the prompt must end with a 'user' message, got 'system'"),
        ({"messages": "hi"}, "field 'messages': expected a list of messages, got string"),
        ({"messages": [USER, {"role": "assistant", "content": "a"}]}, "must end with a 'user' message"),
    ],
)
def test_messages_of_names_where_and_what(row: Any, message: str) -> None:
    with pytest.raises(DataError) as info:
        messages_of(row, "f.jsonl:1")
    assert str(info.value).startswith("f.jsonl:1: ") and message in str(info.value)


def test_prompt_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": [{"role": "user", "content": 1}]}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:3: field 'prompt\[0\].content'"):
        read_prompt_file(path)
    # only the rows that are used are checked
    assert [r.messages for r in read_prompt_file(path, n=1)] == [[{"role": "user", "content": "a"}]]
    path.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_prompt_file(path)
    with pytest.raises(DataError, match="no such file"):
        read_prompt_file(tmp_path / "missing.jsonl")


def test_prompt_file_rows_keep_their_other_keys(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "y"}]), path)
    rows = read_prompt_file(path)
    assert [(r.where, r.row["id"], r.messages[0]["content"]) for r in rows] == [
        (f"{path}: row 1", "x", "a"),
        (f"{path}: row 2", "y", "b"),
    ]


def test_prompts_file_and_task_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": "Say hi."}, {"id": "b", "prompt": [USER]}])
    prompts = load_prompts(task=None, path=str(path))
    assert prompts == [Prompt("0", [{"role": "user", "content": "Say hi."}]), Prompt("b", [USER])]
    assert load_prompts(task=None, path=str(path), n=1) == prompts[:1]
    write_jsonl(path, [{"prompt": 3}])
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: field 'prompt'"):
        load_prompts(task=None, path=str(path))
    task_prompts = load_prompts(task="arithmetic", n=3)
    assert [p.id for p in task_prompts] == [f"arithmetic-train-0000{i}" for i in range(3)]
    assert task_prompts[0].example.meta["answer"] > 0

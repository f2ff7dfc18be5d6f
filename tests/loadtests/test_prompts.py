"""`--prompts-file`: read and checked by the same reader as the trainers' prompt files."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.config import LoadTestConfig
from loadtests.prompts import load_prompts
from training.data import DataError


def test_a_bad_prompt_line_is_named_with_the_trainers_message(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'prompt' \(a string or messages\)"):
        load_prompts(LoadTestConfig(prompts_file=f))
    f.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1: field 'messages': the prompt must end with a 'user'"):
        load_prompts(LoadTestConfig(prompts_file=f))


def test_prompt_files_share_the_trainers_formats(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('[{"prompt": [{"role": "user", "content": "yo"}], "max_tokens": 3}]')
    (prompt,) = load_prompts(LoadTestConfig(prompts_file=f))
    assert (prompt.index, prompt.messages, prompt.max_tokens) == (0, [{"role": "user", "content": "yo"}], 3)

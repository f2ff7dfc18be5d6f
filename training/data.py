"""Training data in TRL's formats: read, validate, write, hash.

Formats (the names TRL's docs use; `DataFormat` below):

    preference  standard                  {"prompt": str, "chosen": str, "rejected": str}
                conversational            {"prompt": [msg...], "chosen": [msg...], "rejected": [msg...]}
                implicit_prompt           {"chosen": str, "rejected": str}  (prompt = common prefix)
                implicit_prompt_conversational
                                          {"chosen": [msg...], "rejected": [msg...]}  (whole chats)
    SFT         conversational            {"messages": [msg...]}
                                          or {"prompt": [msg...], "completion": [msg...]}
                standard                  {"prompt": str, "completion": str}
    prompts     {"prompt": str} (the user's turn) or {"prompt": [msg...]} or {"messages": [msg...]},
                messages ending with a user turn (`messages_of`; files: training/prompts.py)

where msg = {"role": "system" | "user" | "assistant", "content": str}. Other keys of a row
(ids, scores) are kept and ignored.

Files: JSON Lines (`.jsonl`, or `.json` as written by `Dataset.to_json`; a `.json` file
holding one array also works), Parquet, or a directory written by `Dataset.save_to_disk`.

Every problem is a `DataError` that says where it is and what is wrong, e.g.

    data.jsonl:7: field 'chosen': expected a string, got int
    data.jsonl:3: invalid JSON (Expecting ',' delimiter at column 12)
    prefs.parquet: row 4: field 'prompt[1].role': expected one of 'system', 'user', 'assistant', got 'bot'

so a user fixes the file instead of reading a stack trace from inside a trainer. JSONL
locations are file line numbers (blank lines are skipped but still counted); other sources
use 1-based row numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Training data that cannot be used as it is; the message says where and why."""


class DataFormat(StrEnum):
    STANDARD = "standard"
    CONVERSATIONAL = "conversational"
    IMPLICIT_PROMPT = "implicit_prompt"
    IMPLICIT_PROMPT_CONVERSATIONAL = "implicit_prompt_conversational"


ROLES = ("system", "user", "assistant")


class Rows(list):  # list[dict[str, Any]]
    """Rows as loaded, plus where they came from, so validation can name file and line.

    A plain list (slices included) works everywhere too; errors then say "row N".
    """

    def __init__(self, rows: Iterable[dict[str, Any]], source: str, lines: Sequence[int] | None = None):
        super().__init__(rows)
        self.source = source
        self.lines = list(lines) if lines is not None else None


# --- reading -------------------------------------------------------------------------------


def load_rows(path: str | Path) -> Rows:
    """All rows of a JSONL / JSON / Parquet file or a saved HF dataset directory."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        rows: Rows = _read_hf_dataset(path)
    elif not path.exists():
        raise DataError(f"{source}: no such file or directory")
    elif path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif path.suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(
            f"{source}: unsupported file type {path.suffix!r}: use .jsonl, .json, .parquet "
            "or a directory written by datasets' save_to_disk"
        )
    if not rows:
        raise DataError(f"{source}: no rows (empty file)")
    return rows


def _read_jsonl(path: Path) -> Rows:
    source = str(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark from some editors
        data = data[3:]
    if path.suffix == ".json" and data.lstrip().startswith(b"["):
        return _read_json_array(data, source)
    rows, lines = [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"{exc.reason} at byte {exc.start}"
            raise DataError(f"{source}:{lineno}: not valid UTF-8 ({reason})") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}:{lineno}: expected a JSON object, got {_type_name(row)}")
        rows.append(row)
        lines.append(lineno)
    return Rows(rows, source, lines)


def _read_json_array(data: bytes, source: str) -> Rows:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: invalid JSON ({exc})") from None
    for i, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{source}: row {i}: expected a JSON object, got {_type_name(row)}")
    return Rows(value, source)


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read Parquet ({exc})") from None
    return Rows(table.to_pylist(), str(path))


def _read_hf_dataset(path: Path) -> Rows:
    """A `save_to_disk` directory; of a DatasetDict, the "train" split or the only one."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not a dataset directory written by save_to_disk ({exc})") from None
    if isinstance(ds, DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{path}: a DatasetDict with splits {sorted(ds)} and no 'train' split")
    return Rows(ds.to_list(), str(path))


# --- validation ----------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def row_location(rows: Sequence[dict[str, Any]], index: int, source: str) -> str:
    lines = getattr(rows, "lines", None)
    if lines is not None:
        return f"{source}:{lines[index]}"
    return f"{source}: row {index + 1}"


class _RowError(Exception):
    """Raised inside one row's checks; turned into a DataError with the row's location."""


def _need_string(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(f"field {key!r}: expected a string, got {_type_name(value)}")
    if not value.strip():
        raise _RowError(f"field {key!r}: is empty")
    return value


def _need_messages(row: dict[str, Any], key: str, *, roles: Sequence[str] = ROLES) -> list[dict]:
    value = row[key]
    if not isinstance(value, list):
        raise _RowError(f"field {key!r}: expected a list of messages, got {_type_name(value)}")
    if not value:
        raise _RowError(f"field {key!r}: is an empty list of messages")
    for i, msg in enumerate(value):
        field = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise _RowError(f"field {field!r}: expected a message object, got {_type_name(msg)}")
        for part in ("role", "content"):
            if part not in msg:
                raise _RowError(f"field {field!r}: missing {part!r}")
        if msg["role"] not in roles:
            allowed = ", ".join(repr(r) for r in roles)
            raise _RowError(f"field '{field}.role': expected one of {allowed}, got {msg['role']!r}")
        if not isinstance(msg["content"], str):
            raise _RowError(f"field '{field}.content': expected a string, got {_type_name(msg['content'])}")
    return value


def _check_prompt_messages(row: dict[str, Any], key: str) -> None:
    messages = _need_messages(row, key)
    if messages[-1]["role"] != "user":
        raise _RowError(
            f"field {key!r}: the prompt must end with a 'user' message, got {messages[-1]['role']!r}"
        )


def _check_completion_messages(row: dict[str, Any], key: str) -> list[dict]:
    messages = _need_messages(row, key, roles=("assistant",))
    if not any(m["content"].strip() for m in messages):
        raise _RowError(f"field {key!r}: the assistant reply is empty")
    return messages


def _check_conversation(row: dict[str, Any], key: str) -> None:
    """A whole chat: some user turn, ending with a non-empty assistant reply."""
    messages = _need_messages(row, key)
    if not any(m["role"] == "user" for m in messages):
        raise _RowError(f"field {key!r}: has no 'user' message")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _RowError(f"field {key!r}: must end with a non-empty 'assistant' message")


def common_prefix(a: str, b: str) -> str:
    """Character-wise common prefix: the prompt TRL extracts from an implicit-prompt pair."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _preference_format(row: dict[str, Any]) -> DataFormat:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise _RowError(f"missing field {key!r}")
    if "prompt" in row:
        if isinstance(row["prompt"], str):
            _need_string(row, "prompt")
            _need_string(row, "chosen")
            _need_string(row, "rejected")
            fmt = DataFormat.STANDARD
        elif isinstance(row["prompt"], list):
            _check_prompt_messages(row, "prompt")
            _check_completion_messages(row, "chosen")
            _check_completion_messages(row, "rejected")
            fmt = DataFormat.CONVERSATIONAL
        else:
            raise _RowError(
                f"field 'prompt': expected a string or a list of messages, got {_type_name(row['prompt'])}"
            )
    elif isinstance(row["chosen"], str):
        chosen, rejected = _need_string(row, "chosen"), _need_string(row, "rejected")
        prefix = common_prefix(chosen, rejected)
        if chosen != rejected and not prefix.strip():
            raise _RowError(
                "fields 'chosen' and 'rejected' share no prompt: without a 'prompt' field "
                "both must start with the same prompt text (implicit prompt)"
            )
        if chosen != rejected and prefix in (chosen, rejected):
            raise _RowError(
                "fields 'chosen' and 'rejected': one is a prefix of the other, "
                "so one reply is empty once the shared prompt is removed"
            )
        fmt = DataFormat.IMPLICIT_PROMPT
    elif isinstance(row["chosen"], list):
        _check_conversation(row, "chosen")
        _check_conversation(row, "rejected")
        if row["chosen"][:-1] != row["rejected"][:-1]:
            raise _RowError(
                "fields 'chosen' and 'rejected': without a 'prompt' field both chats must "
                "share every message but the last (implicit prompt)"
            )
        fmt = DataFormat.IMPLICIT_PROMPT_CONVERSATIONAL
    else:
        raise _RowError(
            f"field 'chosen': expected a string or a list of messages, got {_type_name(row['chosen'])}"
        )
    if row["chosen"] == row["rejected"]:
        raise _RowError("fields 'chosen' and 'rejected' are identical: the pair carries no preference")
    return fmt


def _preference_shape(row: dict[str, Any]) -> tuple[str, DataFormat]:
    fmt = _preference_format(row)
    return str(fmt), fmt


def _sft_shape(row: dict[str, Any]) -> tuple[str, DataFormat]:
    """(shape, format): the shape tells `messages` rows from prompt/completion rows."""
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            raise _RowError("has both 'messages' and 'prompt'/'completion': use one format")
        messages = _need_messages(row, "messages")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise _RowError("field 'messages': has no non-empty 'assistant' message to learn from")
        return "messages", DataFormat.CONVERSATIONAL
    if "prompt" not in row or "completion" not in row:
        missing = "completion" if "prompt" in row else "prompt"
        raise _RowError(f"missing field {missing!r} (expected 'messages', or 'prompt' and 'completion')")
    if isinstance(row["prompt"], str):
        _need_string(row, "prompt")
        _need_string(row, "completion")
        return "prompt_completion", DataFormat.STANDARD
    if isinstance(row["prompt"], list):
        _check_prompt_messages(row, "prompt")
        _check_completion_messages(row, "completion")
        return "prompt_completion_messages", DataFormat.CONVERSATIONAL
    raise _RowError(
        f"field 'prompt': expected a string or a list of messages, got {_type_name(row['prompt'])}"
    )


def messages_of(row: Any, where: str) -> list[dict[str, str]]:
    """The chat messages of one prompt row (the `prompts` format above), or a DataError that
    starts with `where`. A string prompt is the user's turn; of messages only role and
    content are kept. Every prompt reader (training/prompts.py) goes through here."""
    try:
        return _prompt_messages(row)
    except _RowError as exc:
        raise DataError(f"{where}: {exc}") from None


def _prompt_messages(row: Any) -> list[dict[str, str]]:
    if not isinstance(row, dict):
        raise _RowError(f"expected an object, got {_type_name(row)}")
    if "prompt" in row and "messages" in row:
        raise _RowError("has both 'prompt' and 'messages': use one")
    if "prompt" not in row and "messages" not in row:
        raise _RowError("missing field 'prompt' (a string or messages) or 'messages'")
    key = "prompt" if "prompt" in row else "messages"
    if key == "prompt" and not isinstance(row[key], str | list):
        raise _RowError(
            f"field 'prompt': expected a string or a list of messages, got {_type_name(row[key])}"
        )
    if key == "prompt" and isinstance(row[key], str):
        return [{"role": "user", "content": _need_string(row, key)}]
    _check_prompt_messages(row, key)
    return [{"role": m["role"], "content": m["content"]} for m in row[key]]


def _validate(
    rows: Sequence[dict[str, Any]],
    source: str | Path | None,
    shape_of: Callable[[dict[str, Any]], tuple[str, DataFormat]],
    kind: str,
) -> DataFormat:
    source = str(source if source is not None else getattr(rows, "source", "<rows>"))
    if not rows:
        raise DataError(f"{source}: no rows")
    first: tuple[str, int] | None = None
    fmt = None
    for i, row in enumerate(rows):
        where = row_location(rows, i, source)
        try:
            if not isinstance(row, dict):
                raise _RowError(f"expected an object, got {_type_name(row)}")
            shape, fmt = shape_of(row)
        except _RowError as exc:
            raise DataError(f"{where}: {exc}") from None
        if first is None:
            first = (shape, i)
        elif shape != first[0]:
            first_where = row_location(rows, first[1], source)
            raise DataError(
                f"{where}: {kind} row in format {shape!r}, but {first_where} "
                f"is {first[0]!r}: all rows must share one format"
            )
    assert fmt is not None
    return fmt


def validate_preference_rows(rows: Sequence[dict[str, Any]], source: str | Path | None = None) -> DataFormat:
    """Check every row of a preference dataset; return its format or raise DataError.

    `source` names the data in messages; it defaults to where `load_rows` read it from.
    """
    return _validate(rows, source, _preference_shape, "preference")


def validate_sft_rows(rows: Sequence[dict[str, Any]], source: str | Path | None = None) -> DataFormat:
    """Check every row of an SFT dataset; return STANDARD or CONVERSATIONAL or raise DataError."""
    return _validate(rows, source, _sft_shape, "SFT")


def load_preference_data(path: str | Path) -> tuple[Rows, DataFormat]:
    rows = load_rows(path)
    return rows, validate_preference_rows(rows)


def load_sft_data(path: str | Path) -> tuple[Rows, DataFormat]:
    rows = load_rows(path)
    return rows, validate_sft_rows(rows)


# --- writing and hashing -------------------------------------------------------------------


def _canonical(row: Any, where: str) -> str:
    try:
        return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not JSON-serialisable ({exc})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines atomically: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is a rename on one filesystem; a normal open() so the
    # file gets the usual umask permissions (tempfile would make it 0600).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, row in enumerate(rows, start=1):
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {i}: expected a dict, got {_type_name(row)}")
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (TypeError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot write rows as JSON ({exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def data_hash(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 (hex) of the rows as canonical JSON (sorted keys, no spaces), in order.

    Independent of key order and of the file the rows came from; row order counts.
    """
    h = hashlib.sha256()
    for i, row in enumerate(rows, start=1):
        h.update(_canonical(row, f"row {i}").encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()

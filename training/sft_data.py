"""SFT data from judged samples: keep each prompt's best reply (rejection-sampling fine-tuning).

The `chosen` side of a preference pair is the judge's best of k samples, so the pairs that
`data prefs` writes already hold the data of the classic SFT stage of RLHF when no human
demonstrations exist: fine-tune on the policy's own best answers (RAFT / ReST / "expert
iteration"). `--min-score` keeps only rows whose `chosen_score` (written by `data prefs`)
reaches it, e.g. 1 to keep only gold-correct answers.

Rows map to TRL's SFT formats: a pair with a `prompt` becomes prompt/completion (strings or
messages, as the pair was); an implicit-prompt pair becomes `messages` (conversational) or
prompt/completion split at the shared prefix (standard). Ids and scores are kept.

Options: training/sft_data_config.py; command line: training/scripts/sft_data.py.
"""

from __future__ import annotations

import json
from typing import Any

from training.data import DataError, DataFormat, Rows, common_prefix, row_location
from training.sft_data_config import SFTDataConfig


def chosen_as_sft(rows: Rows, fmt: DataFormat, min_score: float | None = None) -> list[dict[str, Any]]:
    """One SFT row per distinct (prompt, chosen reply): pairs made with `--pairs all` repeat a
    chosen reply once per worse reply, and repeats would weight easy prompts several times."""
    out = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        key = json.dumps([row.get("prompt"), row["chosen"]], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if min_score is not None:
            score = row.get("chosen_score")
            if not isinstance(score, int | float) or isinstance(score, bool):
                where = row_location(rows, i, getattr(rows, "source", "<rows>"))
                raise DataError(
                    f"{where}: --min-score needs a numeric 'chosen_score' "
                    f"(as `data prefs` writes), got {score!r}"
                )
            if score < min_score:
                continue
        extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "rejected_score")}
        if fmt in (DataFormat.STANDARD, DataFormat.CONVERSATIONAL):
            out.append({"prompt": row["prompt"], "completion": row["chosen"], **extra})
        elif fmt is DataFormat.IMPLICIT_PROMPT_CONVERSATIONAL:
            out.append({"messages": row["chosen"], **extra})
        else:
            prompt = common_prefix(row["chosen"], row["rejected"])
            out.append({"prompt": prompt, "completion": row["chosen"][len(prompt) :], **extra})
    return out


def run(config: SFTDataConfig) -> dict[str, Any]:
    from training.data import load_preference_data, validate_sft_rows, write_jsonl

    rows, fmt = load_preference_data(config.from_prefs)
    sft_rows = chosen_as_sft(rows, fmt, config.min_score)
    if not sft_rows:
        raise DataError(f"{config.from_prefs}: no row has chosen_score >= {config.min_score}")
    validate_sft_rows(sft_rows, config.out)
    write_jsonl(config.out, sft_rows)
    kept = chosen_as_sft(rows, fmt)  # before the score filter, to split what was dropped why
    return {
        "pairs": len(rows),
        "rows": len(sft_rows),
        "dropped_duplicates": len(rows) - len(kept),
        "dropped_below_min_score": len(kept) - len(sft_rows),
        "format": str(fmt),
        "out": config.out,
    }

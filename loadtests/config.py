"""The one configuration of a load test (`LoadTestConfig`) and the matrix a comparison runs.

Every field's `help` is what `bonserve loadtest run|compare --help` prints; a YAML matrix file
may set any field by name, and command-line flags override it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.registry import DEFAULT_MODEL_NAME

GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: Any) -> dict[str, float]:
    """`["ttft:500", "e2el:2000"]` (milliseconds, vLLM's `--goodput` syntax) or a mapping."""
    pairs = items.items() if isinstance(items, dict) else (str(i).split(":", 1) for i in items)
    slos: dict[str, float] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"goodput SLOs look like 'ttft:500' (ms), got {':'.join(pair)!r}")
        name, value = pair
        if name not in GOODPUT_METRICS:
            raise ValueError(f"unknown goodput metric {name!r}: use {', '.join(GOODPUT_METRICS)}")
        slos[name] = float(value)
        if slos[name] <= 0:
            raise ValueError(f"goodput SLO {name} must be > 0 ms, got {value!r}")
    return slos


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoadTestConfig:
    """One configuration: which server and model, what prompts, how requests arrive."""

    # --- server
    base_url: str = field(
        default="http://127.0.0.1:8000/v1", metadata=_help("Server URL, with or without the trailing /v1.")
    )
    api_key: str | None = field(
        default=None, metadata=_help("Bearer key for /v1/* (unset: $OPENAI_API_KEY, else none).")
    )
    admin_key: str | None = field(
        default=None, metadata=_help("Bearer key for /admin/* (only used by --load-models).")
    )
    load_models: bool = field(
        default=False,
        metadata=_help("Load registry entries the server does not serve yet (POST /admin/models/load)."),
    )

    # --- what is asked
    model: str = field(default=DEFAULT_MODEL_NAME, metadata=_help("Served model name."))
    best_of: int = field(
        default=1,
        metadata=_help("Candidates the server samples and reranks (sent as extra_body best_of); 1 = plain."),
    )
    temperature: float = field(default=0.8, metadata=_help("Sampling temperature."))
    top_p: float | None = field(default=None, metadata=_help("Nucleus sampling (server default)."))
    max_tokens: int = field(
        default=64, metadata=_help("max_tokens per request (a JSONL prompt's own max_tokens wins).")
    )

    # --- prompts (one source; none given = --task arithmetic)
    task: str | None = field(
        default=None,
        metadata=_help(
            "Built-in task (training/tasks): prompts from its split, quality from its gold verifier."
        ),
    )
    split: str = field(default="heldout", metadata=_help("Task split."))
    prompts_file: Path | None = field(
        default=None,
        metadata=_help('JSONL prompts: {"messages": [...]} or {"prompt": "..."}, optional max_tokens.'),
    )
    synthetic_input_len: int | None = field(
        default=None,
        metadata=_help(
            "Synthetic prompts of about this many words (~tokens); quality then comes from the "
            "server's reward model, if it has one."
        ),
    )

    # --- arrivals
    num_requests: int = field(default=100, metadata=_help("Measured requests (prompts cycle)."))
    duration_s: float | None = field(
        default=None,
        metadata=_help("Stop sending new requests after this many seconds (in-flight ones finish)."),
    )
    request_rate: float = field(
        default=math.inf,
        metadata=_help("Open loop: mean arrivals per second (inf = send as fast as --concurrency allows)."),
    )
    burstiness: float = field(
        default=1.0,
        metadata=_help("Gamma shape of inter-arrival times: 1 = Poisson, <1 burstier, >1 more regular."),
    )
    concurrency: int = field(
        default=4,
        metadata=_help(
            "Most requests in flight (vLLM's --max-concurrency); with an infinite rate this is a "
            "closed loop of this many clients. 0 = no cap (pure open loop)."
        ),
    )
    warmup_requests: int = field(
        default=2,
        metadata=_help("Requests sent one at a time before measuring; excluded from every statistic."),
    )
    seed: int = field(default=0, metadata=_help("Seed of the arrival process and synthetic prompts."))

    # --- what is reported
    goodput: dict[str, float] = field(
        default_factory=dict,
        metadata=_help(
            "SLOs for goodput, vLLM syntax: ttft:MS tpot:MS e2el:MS (a request is good if it "
            "meets all given)."
        ),
    )
    oracle: bool = field(
        default=True,
        metadata=_help(
            "With a task and best_of > 1: also sample the candidates without reranking and report "
            "the oracle ceiling (perfect reranker) by the gold verifier."
        ),
    )
    request_timeout_s: float = field(default=600.0, metadata=_help("Client timeout per request."))
    out: Path | None = field(default=None, metadata=_help("Directory for report.json, report.md and plots."))
    progress: bool = field(default=True, metadata=_help("Show a progress bar."))

    def __post_init__(self) -> None:
        self.goodput = parse_goodput(self.goodput)
        sources = [s for s in ("task", "prompts_file", "synthetic_input_len") if getattr(self, s) is not None]
        if len(sources) > 1:
            raise ValueError(f"give one prompt source, got {sources}")
        if not sources:
            self.task = "arithmetic"
        if self.prompts_file is not None:
            self.prompts_file = Path(self.prompts_file)
        if self.out is not None:
            self.out = Path(self.out)
        checks = {
            "best_of": self.best_of >= 1,
            "num_requests": self.num_requests >= 1,
            "request_rate": self.request_rate > 0,
            "burstiness": self.burstiness > 0,
            "concurrency": self.concurrency >= 0,
            "warmup_requests": self.warmup_requests >= 0,
            "max_tokens": self.max_tokens >= 1,
            "temperature": 0 <= self.temperature <= 2,
            "duration_s": self.duration_s is None or self.duration_s > 0,
            "synthetic_input_len": (self.synthetic_input_len is None or self.synthetic_input_len >= 1),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {bad[0]}: {getattr(self, bad[0])!r}")

    # --- derived

    @property
    def v1_url(self) -> str:
        url = self.base_url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    @property
    def root_url(self) -> str:
        """The server root (for /metrics and /admin)."""
        return self.v1_url.removesuffix("/v1")

    @property
    def key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "unused"

    @property
    def label(self) -> str:
        return f"{self.model} best_of={self.best_of} T={self.temperature:g}"

    def for_cell(self, cell: Cell) -> LoadTestConfig:
        return replace(self, model=cell.model, best_of=cell.best_of, temperature=cell.temperature)

    def settings(self) -> dict[str, Any]:
        """The shared settings as JSON-able values (for the report), keys left out."""
        skip = {"api_key", "admin_key", "model", "best_of", "temperature"}
        return {
            f.name: (str(v) if isinstance(v, Path) else v)
            for f in fields(self)
            if f.name not in skip
            for v in [getattr(self, f.name)]
        }


@dataclass(frozen=True)
class Cell:
    """One row of a comparison: served model x best_of x temperature."""

    model: str
    best_of: int
    temperature: float


def expand_matrix(
    models: list[str],
    best_of: list[int],
    temperatures: list[float],
    cells: list[dict[str, Any]] | None = None,
) -> list[Cell]:
    """The full product models x best_of x temperatures, then any explicit `cells` (e.g. a tuned
    policy greedy at n=1 beside base BoN-8 at T=0.8), duplicates dropped, order kept."""
    out = [Cell(m, int(b), float(t)) for m in models for b in best_of for t in temperatures]
    for c in cells or []:
        unknown = set(c) - {"model", "best_of", "temperature"}
        if unknown or "model" not in c:
            raise ValueError(f"a matrix cell needs 'model' and may set best_of/temperature: {c!r}")
        out.append(
            Cell(
                str(c["model"]),
                int(c.get("best_of", 1)),
                float(c.get("temperature", temperatures[0] if temperatures else 0.8)),
            )
        )
    return list(dict.fromkeys(out))

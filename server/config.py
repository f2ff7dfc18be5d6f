"""Server settings: the one home of every knob (env `BONSERVE_*`, overridden by CLI flags)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.engine_args import DTYPES, EngineOptions, parse_engine_args
from core.lora import VLLM_LORA_RANKS
from core.registry import DEFAULT_MODEL_NAME, RegistryError, check_name, default_registry_root

_ENGINE = EngineOptions()  # engine defaults, shared with the trainers' offline engines


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BONSERVE_", extra="forbid")

    # --- network
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")

    # --- models
    model: str = Field(
        DEFAULT_MODEL_NAME,
        description="Policy: a registry entry name (full or LoRA: a LoRA entry is served on its "
        "base) or a path to an HF checkpoint directory. With --alias, a promotion recorded in the "
        "registry's desired state wins.",
    )
    served_model_name: str | None = Field(
        None, description="Name clients send as `model` (default: the registry name or dir name)."
    )
    registry: Path = Field(
        default_factory=default_registry_root, description="Checkpoint registry directory."
    )

    alias: str | None = Field(
        None,
        description="A stable served name (e.g. 'policy') pointing at --model; switch it with "
        "POST /admin/aliases/promote.",
    )
    reconcile_interval_s: float = Field(
        5.0,
        ge=0,
        description="How often to check the registry's desired state (_state/aliases.json, written "
        "by every promotion) and promote this server's aliases and reward model to it; 0 = only at "
        "start-up. Promotions through any replica thus reach all of them.",
    )
    max_loras: int = Field(
        0,
        ge=0,
        description="LoRA adapters resident in the policy engine at once; 0 disables LoRA "
        "(vLLM, like this server, must be started with LoRA on to load adapters at run time).",
    )
    max_lora_rank: int = Field(
        _ENGINE.max_lora_rank, description="Largest LoRA rank the policy engine accepts (vLLM: 8..512)."
    )
    reward_model: str | None = Field(
        None,
        description="Default reward model for Best-of-N, for every policy no other rule pairs: "
        "registry entry name or checkpoint directory.",
    )
    reward_models: str = Field(
        "",
        description="Reward model per policy: 'POLICY=RM,...' (POLICY a served name, alias or "
        "registry entry; RM a registry entry, or 'none' for no reranking). A policy neither a "
        "promotion nor this names is reranked by the reward model whose manifest says it was "
        "trained for it (extra.trained_for.policy), else by --reward-model. One engine per "
        "distinct reward model, shared by the policies that map to it.",
    )
    allow_unhelpful_reward_model: bool = Field(
        False,
        description="Use a (policy, reward model) pairing even when its recorded held-out gap "
        "captured is <= 0 (core/rerank.py: Best-of-N with it is no better than one sample). Off: "
        "such a pairing does not rerank (best_of > n with the reward selector is refused); on: it "
        "does, flagged as forced in /v1/models and bonserve_rerank_forced.",
    )

    # --- Best-of-N
    default_best_of: str = Field(
        "1",
        description=(
            "Candidates sampled when a request sets no best_of: 'N' for every model, "
            "'NAME=N,...' per served model, or both ('1,policy=8')."
        ),
    )
    max_best_of: int = Field(16, ge=1, description="Largest best_of a request may ask for.")
    default_bon_prune: str = Field(
        "",
        description=(
            "Pruned Best-of-N when a request sets no bon_prune_at: 'AT+AT@FRACTION' for every "
            "model ('4+8@0.5': after 4 and after 8 decoded tokens, abort the lowest-scoring half "
            "of the candidates still running), 'NAME=AT+AT@FRACTION,...' per served model, or "
            "both. Applies only where candidates are ranked by reward (best_of > n, a reward "
            "selector); a request's bon_prune_at null or [] turns it off. Off ('') by default."
        ),
    )
    bon_prune_mode: Literal["hold", "overlap"] = Field(
        "hold",
        description=(
            "How a pruning checkpoint waits for the reward model when a request sets no "
            "bon_prune_mode: 'hold' (the candidates stop at the checkpoint while their partial "
            "answers are scored, the survivors resume from there) or 'overlap' (they decode on "
            "meanwhile). docs/benchmarks/bon_pruning_hold.md measures the two."
        ),
    )
    default_bon_prune_margin: str = Field(
        "",
        description=(
            "With a pruning schedule, when a request sets no bon_prune_margin: at each "
            "checkpoint also abort the running candidates whose partial reward is more than "
            "this margin below the n-th best finished candidate's. 'M' for every model, "
            "'NAME=M,...' per served model, or both. Off ('') by default."
        ),
    )
    default_bon_reward_threshold: str = Field(
        "",
        description=(
            "Adaptive N when a request sets no bon_reward_threshold: stop sampling once n "
            "finished candidates reach this reward (length_penalty applied, as ranked). 'T' for "
            "every model, 'NAME=T,...' per served model, or both. Applies only where candidates "
            "are ranked by reward; a request's bon_reward_threshold null turns it off. Off ('') "
            "by default."
        ),
    )
    length_penalty: float = Field(
        0.0,
        ge=0,
        description="Subtracted from the reward of candidates cut by max_tokens (0 = off).",
    )
    reward_omp_threads: int = Field(
        1,
        ge=1,
        description=(
            "OpenMP threads of the reward engine. On CPU both engines would otherwise pin "
            "threads to the same cores; an unbound single-threaded scorer leaves them to the "
            "policy."
        ),
    )

    # --- engine (vLLM)
    max_model_len: int = Field(_ENGINE.max_model_len, ge=64, description="Context length the engine serves.")
    kv_cache_gib: float = Field(
        _ENGINE.kv_cache_gib,
        gt=0,
        description=(
            "KV cache size per engine. Explicit rather than a memory fraction: on CPU vLLM "
            "derives the fraction from one NUMA node, which co-located engines share."
        ),
    )
    kv_block_size: int | None = Field(
        _ENGINE.kv_block_size,
        ge=1,
        description="Tokens per KV-cache block in both engines. Unset: by device - 32 on CPU, where "
        "vLLM's own 128 is longer than a short chat prompt, so prefix caching (whole blocks only) "
        "never reused the prompt that every Best-of-N candidate and reward-model scoring shares "
        "(docs/benchmarks/kv_block_size.md); vLLM's default on a GPU.",
    )
    reward_kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV cache of the reward engine (default: --kv-cache-gib). Scoring is one "
        "prefill per candidate, so the scorer needs far less than the policy.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vLLM's gpu_memory_utilization for the policy engine (unset: vLLM's default, "
        "0.92). With the explicit KV cache it only gates the start: vLLM refuses to start an engine "
        "unless this fraction of the GPU is free, so two engines on one GPU need it (and the "
        "reward one) well below 0.5. Not used on CPU.",
    )
    reward_gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="gpu_memory_utilization of the reward engine (unset: vLLM's default).",
    )
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        description="Sequences the policy engine decodes at once (vLLM's max_num_seqs; unset: "
        "vLLM's default for the device). A best_of=16 request is 16 sequences.",
    )
    reward_max_num_seqs: int | None = Field(
        None, ge=1, description="max_num_seqs of the reward engine (unset: vLLM's default)."
    )
    engine_args: str | None = Field(
        None,
        description="Further vLLM engine arguments as a JSON object of AsyncEngineArgs names, merged "
        "last into both engines' arguments, e.g. '{\"enable_prefix_caching\": true}'. Arguments "
        "bonserve sets itself (model, dtype, max_model_len, ...) are refused: use their settings.",
    )
    dtype: str = Field(
        "auto",
        description=(
            "Weight dtype: auto, float32, bfloat16 or float16. auto = by device: bfloat16 on a GPU "
            "and on CPUs with bfloat16 instructions (avx512_bf16 / amx_bf16), where it decoded "
            "1.6x faster than float32; float32 on other CPUs, where bfloat16 decoded at half the "
            "speed (docs/benchmarks/engine_settings.md). bfloat16 changes some greedy answers of "
            "the bundled model; pass --dtype float32 for float32-exact outputs."
        ),
    )
    enforce_eager: bool | None = Field(
        _ENGINE.enforce_eager,
        description="Skip torch.compile. Unset: by device - eager on CPU, where compile measured no "
        "faster decode and a 3-7x slower start (docs/benchmarks/engine_settings.md), compiled on GPU.",
    )
    enable_chunked_prefill: bool = Field(
        _ENGINE.enable_chunked_prefill,
        description=(
            "Off by default: on the CPU backend of vLLM 0.32 a seeded request whose prefill is "
            "chunked kills the engine core ('CPU Generator does not use offset')."
        ),
    )
    engine_seed: int = Field(_ENGINE.seed, description="Engine-level seed for unseeded sampling.")
    engine_start_timeout_s: float = Field(600, gt=0, description="Give up starting an engine.")
    engine_restart_backoff_s: float = Field(2.0, ge=0, description="Pause before a restart.")

    swap_in_place: bool = Field(
        True,
        description="Promote a full checkpoint by loading its weights into the engine of the full "
        "checkpoint it replaces, when that engine serves nothing else and both have the same "
        "architecture and tokenizer: requests to the alias wait while the old ones drain and the "
        "weights load, instead of a second engine starting beside the first "
        "(benchmarks/swap_latency.py measures both).",
    )
    standby_engine: bool = Field(
        False,
        description="Keep one spare policy engine, started on the --model weights after /ready, so "
        "the first promotion of a full checkpoint with the same layout loads its weights into it "
        "in place (seconds) instead of starting an engine (~45 s on a 2-core CPU under load); "
        "refilled in the background after use. Costs one more engine's memory "
        "(benchmarks/swap_latency.py measures it).",
    )
    swap_memory_headroom: float = Field(
        1.5,
        ge=1.0,
        description="Loading a full checkpoint needs weights x this + the KV cache free in memory.",
    )

    # --- request limits
    max_n: int = Field(16, ge=1, description="Largest `n` a request may ask for.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest `max_tokens` a request may ask.")
    default_max_tokens: int = Field(256, ge=1, description="`max_tokens` when the request does not set it.")
    max_concurrent_requests: int = Field(64, ge=1, description="Requests admitted into the engine at once.")
    max_waiting_requests: int = Field(
        256, ge=0, description="Requests queued for admission; beyond this new ones get 429."
    )
    request_timeout_s: float = Field(300, gt=0, description="Per-request deadline (504 after).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Request body cap (413 above).")
    shutdown_drain_s: float = Field(30, ge=0, description="Drain time for in-flight requests.")
    sse_keepalive_s: float = Field(
        5.0,
        gt=0,
        description="A streamed Best-of-N request sends its headers at once and a keep-alive (a blank "
        "line) this often while its candidates decode, so proxies with an idle timeout do not cut it.",
    )

    # --- cost model
    accelerator_price_per_hour: float = Field(
        0.0,
        ge=0,
        description="Price of one replica per hour (USD) for the estimated-cost metrics.",
    )

    # --- auth
    api_key: str | None = Field(None, description="Bearer key for /v1/* (unset: open).")
    admin_key: str | None = Field(
        None,
        description="Bearer key for /admin/* (load, unload, promote). Unset: the admin API is off "
        "(403), unless --open-admin.",
    )
    open_admin: bool = Field(
        False,
        description="Serve /admin/* without a key. Refused unless --host is a loopback address, "
        "and together with --admin-key: for a local, single-user server only.",
    )

    def engine_options(self) -> EngineOptions:
        """The policy engine's knobs of these settings, for `core.engine_args`."""
        return EngineOptions(
            max_model_len=self.max_model_len,
            kv_cache_gib=self.kv_cache_gib,
            kv_block_size=self.kv_block_size,
            dtype=self.dtype,
            seed=self.engine_seed,
            enforce_eager=self.enforce_eager,
            enable_chunked_prefill=self.enable_chunked_prefill,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs,
            engine_args=parse_engine_args(self.engine_args),
        )

    def reward_engine_options(self) -> EngineOptions:
        """The reward engine's knobs: the policy's, with its own memory and batch sizes."""
        return replace(
            self.engine_options(),
            kv_cache_gib=self.reward_kv_cache_gib or self.kv_cache_gib,
            gpu_memory_utilization=self.reward_gpu_memory_utilization,
            max_num_seqs=self.reward_max_num_seqs,
            max_loras=0,
        )

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}, not {value!r}")
        return value

    @field_validator("engine_args")
    @classmethod
    def _check_engine_args(cls, value: str | None) -> str | None:
        parse_engine_args(value)
        return value

    def reward_model_map(self) -> dict[str, str | None]:
        """`reward_models` as POLICY -> reward model entry (None: 'none', no reranking)."""
        mapping: dict[str, str | None] = {}
        for part in filter(None, (p.strip() for p in self.reward_models.split(","))):
            policy, _, rm = (x.strip() for x in part.partition("="))
            mapping[policy] = None if rm == "none" else rm
        return mapping

    def best_of_for(self, served_name: str) -> int:
        """The default candidate count for one served model (see `default_best_of`)."""
        default = 1
        for part in filter(None, (p.strip() for p in self.default_best_of.split(","))):
            name, sep, value = part.rpartition("=")
            if not sep:
                default = int(value)
            elif name == served_name:
                return int(value)
        return default

    def bon_prune_for(self, served_name: str) -> tuple[tuple[int, ...], float] | None:
        """The default pruning schedule (checkpoints, fraction) of one served model, or None
        (see `default_bon_prune`)."""
        spec = _per_model(self.default_bon_prune, served_name)
        return None if spec is None else parse_prune(spec)

    def bon_prune_margin_for(self, served_name: str) -> float | None:
        """The default pruning margin of one served model (see `default_bon_prune_margin`)."""
        spec = _per_model(self.default_bon_prune_margin, served_name)
        return None if spec is None else float(spec)

    def bon_reward_threshold_for(self, served_name: str) -> float | None:
        """The default early-stop reward of one served model (see `default_bon_reward_threshold`)."""
        spec = _per_model(self.default_bon_reward_threshold, served_name)
        return None if spec is None else float(spec)

    @model_validator(mode="after")
    def _check_bon_defaults(self) -> Settings:
        for part in filter(None, (p.strip() for p in self.default_bon_prune.split(","))):
            name, _, spec = part.rpartition("=")
            if parse_prune(spec)[1] == 0 and _per_model(self.default_bon_prune_margin, name) is None:
                raise ValueError(
                    f"default_bon_prune={self.default_bon_prune!r}: fraction 0 prunes nothing "
                    f"without a default_bon_prune_margin for {name or 'every model'}"
                )
        for key in ("default_bon_reward_threshold", "default_bon_prune_margin"):
            spec = getattr(self, key)
            for part in filter(None, (p.strip() for p in spec.split(","))):
                try:
                    value = float(part.rpartition("=")[2])
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise ValueError(f"{key}={spec!r}: expected a number 'V' or 'NAME=V,...'")
        return self

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        """Security settings fail closed: refuse what would leave the admin API open by
        accident, or make the client key an admin key."""
        for name in ("api_key", "admin_key"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty: unset it, or give a real key")
            if value is not None and value != value.strip():
                raise ValueError(f"{name} has leading or trailing whitespace, which clients would not send")
        if self.admin_key is not None and self.admin_key == self.api_key:
            raise ValueError("admin_key equals api_key: every API client could administer the server")
        if self.open_admin and self.admin_key is not None:
            raise ValueError("open_admin with an admin_key: choose one")
        if self.open_admin and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"open_admin on host {self.host!r}: an open admin API may only bind a loopback "
                f"address ({', '.join(LOOPBACK_HOSTS)}); set --admin-key instead"
            )
        return self

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank={self.max_lora_rank}: vLLM allows {VLLM_LORA_RANKS}")
        try:
            values = [int(p.rpartition("=")[2]) for p in self.default_best_of.split(",") if p.strip()]
        except ValueError:
            raise ValueError(
                f"default_best_of={self.default_best_of!r}: expected 'N' or 'NAME=N,...'"
            ) from None
        if any(not 1 <= v <= self.max_best_of for v in values):
            raise ValueError(
                f"default_best_of={self.default_best_of!r}: values must lie in 1..{self.max_best_of}"
            )
        for part in filter(None, (p.strip() for p in self.reward_models.split(","))):
            policy, sep, rm = (x.strip() for x in part.partition("="))
            try:
                if not sep:
                    raise RegistryError("no '='")
                check_name(policy)
                if rm != "none":
                    check_name(rm)
            except RegistryError as exc:
                raise ValueError(
                    f"reward_models={self.reward_models!r}: expected 'POLICY=RM,...' ({part!r}: {exc})"
                ) from None
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens={self.default_max_tokens} exceeds "
                f"max_tokens_limit={self.max_tokens_limit}"
            )
        return self


def _per_model(spec: str, served_name: str) -> str | None:
    """The value for `served_name` in a 'V' / 'NAME=V,...' setting (its own entry, else the
    bare default, else None)."""
    default = None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.rpartition("=")
        if not sep:
            default = value
        elif name == served_name:
            return value
    return default


def parse_prune(spec: str) -> tuple[tuple[int, ...], float]:
    """'AT+AT@FRACTION' -> ((AT, AT), FRACTION); checkpoints >= 1 ascending, 0 <= FRACTION < 1
    (0: only the margin prunes, `default_bon_prune_margin`)."""
    at, _, fraction = spec.partition("@")
    try:
        checkpoints = tuple(int(a) for a in at.split("+"))
        share = float(fraction) if fraction else 0.5
    except ValueError:
        raise ValueError(f"bon prune {spec!r}: expected 'AT+AT@FRACTION', e.g. '4+8@0.5'") from None
    if any(a < 1 for a in checkpoints) or list(checkpoints) != sorted(set(checkpoints)):
        raise ValueError(f"bon prune {spec!r}: checkpoints must be ascending token counts >= 1")
    if not 0 <= share < 1:
        raise ValueError(f"bon prune {spec!r}: the fraction must lie in [0, 1)")
    return checkpoints, share

"""OpenAI request/response schemas as pydantic models (chat and legacy completions).

Why hand-written rather than vLLM's `entrypoints.openai` models: vLLM's request models accept
and silently ignore unknown fields, accept message roles and parameters we do not honour, and
dropped `best_of`; their signatures also move between releases. Requests here forbid unknown
fields (OpenAI answers "Unrecognized request argument" the same way), so nothing a client
sends is silently dropped. Response models follow the OpenAI spec field for field; bonserve's
extensions sit in marked blocks.

vLLM's own sampling extras are accepted where bonserve honours them exactly as vLLM does (see
the "vLLM sampling extras" block of `SamplingFields`, and `StreamOptions`), so vLLM clients
and load generators (`vllm bench serve`, GuideLLM) run unchanged; the rest of vLLM's extras
stay unrecognized.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ParamError(ValueError):
    """A cross-field validation error that knows which parameter is at fault (pydantic's
    model-level errors have no location, but OpenAI's envelope names the `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --------------------------------------------------------------------------- requests


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, str]:
        """The message as a chat template expects it ('developer' is a system turn)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Strict):
    include_usage: bool = False
    # ---- vLLM extension (GuideLLM sends it)
    continuous_usage_stats: bool = Field(
        False, description="vLLM: with include_usage, every chunk also carries the usage so far."
    )

    def continuous(self) -> bool:
        return self.include_usage and self.continuous_usage_stats


class JsonSchemaFormat(_Strict):
    name: str = Field(..., max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ParamError(
                "response_format", "response_format.type 'json_schema' needs a 'json_schema' object"
            )
        return self


StopField = Annotated[str | list[str] | None, Field(None)]


class SamplingFields(_Strict):
    """Fields shared by chat and completions requests, with OpenAI's ranges."""

    model: str
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: StopField = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    # ---- extensions (not in OpenAI's current spec) -------------------------------------
    best_of: int | None = Field(
        None,
        ge=1,
        description="Candidates to sample and rerank with the reward model; the top `n` return.",
    )
    top_k: int | None = Field(None, ge=-1, description="vLLM top-k (-1 or 0: off).")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM min-p.")
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="vLLM penalty.")
    return_candidates: bool = Field(
        False,
        description="Also return every scored Best-of-N candidate in `candidates` (best first: "
        "text, reward, finish_reason, completion_tokens, rank, and the choice it became), "
        "to inspect what the reward model chose between. An empty list when nothing was "
        "ranked (best_of == n). Not with `stream` (400).",
    )
    bon_selector: Literal["reward", "majority", "logprob", "reward+majority"] | None = Field(
        None,
        description="How Best-of-N picks among the candidates (server/selectors.py): 'reward' "
        "(default: the highest reward of the model's reward model), 'majority' (self-consistency: "
        "the most frequent final answer, the last number in the text or else the normalised text), "
        "'logprob' (the highest mean token log-probability), 'reward+majority' (majority, the "
        "reward breaking ties and picking the representative). 'majority' and 'logprob' need no "
        "reward model.",
    )
    bon_prune_at: list[int] | None = Field(
        None,
        max_length=8,
        description="Pruned Best-of-N: after each of these decoded-token counts (ascending, >= 1), "
        "score every unfinished candidate's partial answer with the reward model and abort the "
        "lowest-scoring `bon_prune_fraction` of them in the engine (never fewer than `n` "
        "survivors; a candidate that has finished is never pruned). Pruned candidates never "
        "become choices. Needs best_of > n and bon_selector 'reward' or 'reward+majority' (else "
        "400). Absent: the server's --default-bon-prune for the model (off unless set); [] or "
        "null turns it off for this request.",
    )
    bon_prune_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Share of the unfinished candidates each checkpoint aborts (default: the "
        "server's --default-bon-prune fraction, else 0.5; 0 leaves the pruning to "
        "bon_prune_margin, which it then needs). Same condition as bon_prune_at, and a "
        "checkpoint to prune at: bon_prune_at or the server's schedule (400 otherwise).",
    )
    bon_prune_margin: float | None = Field(
        None,
        allow_inf_nan=False,
        description="At each checkpoint, also abort every unfinished candidate whose partial "
        "reward is more than this margin below the n-th best reward of the candidates already "
        "finished (as ranked, length_penalty applied): once n answers are in hand, a "
        "continuation that already scores below them stops decoding. Same condition as "
        "bon_prune_fraction. Absent: the server's --default-bon-prune-margin for the model (off "
        "unless set); null turns it off for this request.",
    )
    bon_reward_threshold: float | None = Field(
        None,
        description="Adaptive N: once `n` finished candidates reach this reward, abort the rest "
        "in the engine and return. The reward compared is the one that ranks and is reported "
        "(the server's length_penalty subtracted from a candidate cut by max_tokens). Needs "
        "best_of > n and bon_selector 'reward' or 'reward+majority' (else 400). Absent: the "
        "server's --default-bon-reward-threshold for the model (off unless set); null turns it "
        "off for this request.",
    )
    bon_prune_mode: Literal["hold", "overlap"] | None = Field(
        None,
        description="How a pruning checkpoint waits for the reward model: 'hold' (each "
        "candidate's engine request ends at the checkpoint, so nothing decodes while the partial "
        "answers are scored, and the survivors resume from their tokens as new engine requests; "
        "not with `stop`, frequency/presence penalties or a structured response_format: 400) or "
        "'overlap' (the candidates decode on while they are scored; the pruned ones are aborted "
        "mid-flight). Absent: the server's --bon-prune-mode.",
    )

    # ---- vLLM sampling extras ----------------------------------------------------------
    # Accepted because bonserve passes each one to vllm.SamplingParams under the same name
    # and meaning as vLLM's own server, for every candidate of a request alike (a reward
    # model then ranks them as usual). Load generators depend on them: `vllm bench serve`
    # sends `ignore_eos` to get fixed output lengths.
    #
    # Refused as unrecognized, on purpose: `use_beam_search` / `length_penalty` (beam search;
    # this server's search is Best-of-N, and `length_penalty` is a server setting here),
    # `chat_template`, `chat_template_kwargs`, `add_generation_prompt`,
    # `continue_final_message`, `add_special_tokens` (the server owns the templates: the
    # reward model scores the conversation the template renders), `truncate_prompt_tokens`
    # (an over-long prompt is a 400, never silently cut), `prompt_logprobs`,
    # `structured_outputs` (use `response_format`), `logits_processors`, `priority`,
    # `request_id`, `cache_salt`, `kv_transfer_params`, `vllm_xargs`,
    # `return_tokens_as_token_ids`.
    ignore_eos: bool = Field(
        False,
        description="vLLM: decode past the end-of-sequence token until max_tokens (fixed output "
        "lengths, for benchmarks). Under Best-of-N every candidate then ends by length.",
    )
    min_tokens: int = Field(
        0, ge=0, description="vLLM: tokens to decode before EOS or `stop_token_ids` may end a candidate."
    )
    stop_token_ids: list[int] | None = Field(
        None, max_length=64, description="vLLM: token ids that end a candidate, besides EOS."
    )
    skip_special_tokens: bool = Field(
        True, description="vLLM: leave special tokens out of the returned (and scored) text."
    )
    spaces_between_special_tokens: bool = Field(
        True, description="vLLM: put spaces between special tokens in the returned text."
    )
    include_stop_str_in_output: bool = Field(
        False, description="vLLM: keep the matched `stop` string at the end of the returned text."
    )

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("bon_prune_at")
    @classmethod
    def _prune_at_ascending(cls, value: list[int] | None) -> list[int] | None:
        if value and (any(v < 1 for v in value) or value != sorted(set(value))):
            raise ValueError(f"bon_prune_at must be ascending token counts >= 1, got {value}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must lie in [-100, 100], got {bias}")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of < self.n:
            raise ParamError("best_of", f"best_of ({self.best_of}) must be >= n ({self.n})")
        candidates = max(self.n, self.best_of or 1)
        if self.temperature == 0 and candidates > 1:
            # Greedy candidates are all the same text, so ranking them buys nothing; vLLM refuses
            # them too, but its message names only `n`.
            field = "best_of" if (self.best_of or 1) > 1 else "n"
            raise ParamError(
                field,
                f"{field}={candidates} needs sampling: at temperature 0 every candidate is the same "
                "greedy text; set temperature > 0 (top_k=1 keeps each candidate greedy)",
            )
        if self.return_candidates and self.stream:
            raise ParamError(
                "return_candidates",
                "return_candidates is not supported with stream: candidates are ranked only once "
                "all of them are scored; send stream=false",
            )
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ParamError("max_tokens", "set max_tokens or max_completion_tokens, not both")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be an empty list")
            if isinstance(value[0], str) and len(value) > 1:
                raise ValueError("batched prompts are not supported: send one prompt per request")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageBreakdown(BaseModel):
    """bonserve extension: what a request really cost (Best-of-N decodes more than it returns)."""

    candidates: int
    delivered_tokens: int
    decoded_tokens: int
    reward_model_tokens: int = 0
    candidates_finished: int | None = Field(
        None, description="Pruned Best-of-N / adaptive N: candidates decoded to the end (null: neither on)."
    )
    candidates_pruned: int | None = Field(None, description="Candidates aborted at a checkpoint.")
    candidates_stopped: int | None = Field(
        None, description="Candidates aborted once n finished ones reached bon_reward_threshold."
    )
    resumed_prompt_tokens: int | None = Field(
        None,
        description="Pruned Best-of-N in 'hold' mode: prompt tokens the engine read again to "
        "resume the survivors after a checkpoint (the request's prompt plus each survivor's "
        "tokens so far; prefix caching serves the cached part). Null: no pruning.",
    )
    selector: str | None = Field(None, description="The Best-of-N selector that ranked (null: none did).")
    reward_model: str | None = Field(None, description="The reward model that scored the candidates.")
    rerank_allowed: bool | None = Field(
        None,
        description="False when that reward model is paired with this policy against the gate "
        "(its recorded held-out gap captured is <= 0, forced by the operator): see /v1/models.",
    )
    engine_seconds: float | None = Field(
        None, description="Replica-seconds attributed to this request (cost model)."
    )
    estimated_cost_usd: float | None = Field(
        None, description="engine_seconds x accelerator_price_per_hour / 3600."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    bonserve: UsageBreakdown | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None
    # ---- extension
    reward: float | None = None


class ScoredCandidate(BaseModel):
    """bonserve extension: one Best-of-N candidate, as sampled and scored (`return_candidates`)."""

    index: int = Field(..., description="Sample order: the engine's index of this candidate.")
    rank: int = Field(..., description="Position in bon_selector order, 0 = best (choices are the first n).")
    text: str = Field(..., description="The candidate's text as sampled (without an echoed prompt).")
    reward: float | None = Field(
        ...,
        description="The reward model's score, minus the server's length_penalty if max_tokens "
        "cut it (the value the default selector ranks by); null when nothing scored it "
        "(bon_selector 'majority' or 'logprob').",
    )
    score: float | None = Field(
        None,
        description="The value the request's bon_selector ranked by: the reward, its answer's "
        "share of the votes (majority selectors), or its mean token logprob.",
    )
    answer: str | None = Field(None, description="The normalised answer it voted for (majority selectors).")
    outcome: str | None = Field(
        None, description="Under pruning / adaptive N: 'finished', 'pruned' or 'stopped' (never a choice)."
    )
    partial_reward: float | None = Field(
        None, description="Reward of its partial answer at the last pruning checkpoint it reached."
    )
    partial_text: str | None = Field(
        None, description="That partial answer: the text the reward model scored at the checkpoint."
    )
    finish_reason: str
    completion_tokens: int = Field(..., description="Tokens decoded for this candidate.")
    choice_index: int | None = Field(
        None, description="Index in `choices` this candidate was returned as; null if not returned."
    )


def _candidates_field() -> Any:
    return Field(
        None,
        description="bonserve extension, with `return_candidates`: every scored candidate, best "
        "first (empty when nothing was ranked). Absent otherwise.",
        exclude_if=lambda v: v is None,
    )


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    # ---- extension
    candidates: list[ScoredCandidate] | None = _candidates_field()


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    reward: float | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    reward: float | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    # ---- extension
    candidates: list[ScoredCandidate] | None = _candidates_field()


class RerankVerdict(BaseModel):
    """The gate's view of one (policy, reward model) pairing (core/rerank.py)."""

    evaluated: bool = Field(..., description="A held-out evaluation of the pairing is recorded.")
    gap_captured: float | None = Field(
        None, description="Share of the oracle (pass@n) gain over one sample the reward model realises."
    )
    pairwise_accuracy: float | None = Field(
        None, description="Held-out (correct, wrong) pairs ordered right."
    )
    allowed: bool = Field(..., description="False when gap_captured <= 0: Best-of-N with it is no better.")
    forced: bool = Field(
        False, description="Used although not allowed (promotion `force`, or start-up setting)."
    )
    reason: str


class ModelRerank(BaseModel):
    """bonserve extension on a model card: what reranks its Best-of-N candidates."""

    reward_model: str | None = Field(
        None, description="Null: best_of > n needs bon_selector majority/logprob."
    )
    source: str = Field(
        ...,
        description="Why this reward model: 'promotion' (paired with the alias), '--reward-models', "
        "'trained_for' (the reward model's manifest names this policy), '--reward-model' (the "
        "default), or 'none'.",
    )
    rerank: RerankVerdict | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bonserve"
    max_model_len: int | None = None
    # ---- extension
    kind: str | None = Field(None, description="base/sft/rm/dpo/ppo/..., or 'alias'.")
    parent: str | None = Field(
        None, description="Checkpoint this one derives from (for an alias: its current target)."
    )
    format: str | None = Field(None, description="'full' weights or a 'lora' adapter.")
    bonserve: ModelRerank | None = Field(
        None, description="bonserve extension: which reward model reranks this model's Best-of-N."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- rewards (extension)


class RewardItem(_Strict):
    messages: list[ChatMessage] = Field(..., min_length=1)
    response: str


class RewardRequest(_Strict):
    """Score (conversation, response) pairs with the server's reward model."""

    model: str | None = Field(None, description="Reward model name (optional: the only one).")
    items: list[RewardItem] = Field(..., min_length=1, max_length=64)


class RewardScore(BaseModel):
    index: int
    reward: float


class RewardUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RewardResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[RewardScore]
    usage: RewardUsage


# --------------------------------------------------------------------------- tokenizer (vLLM's)


class TokenizeRequest(_Strict):
    """vLLM's `POST /tokenize` body (vllm.entrypoints.serve.tokenize.protocol), either kind:
    a raw `prompt` (as /v1/completions sees it) or chat `messages` (through the model's chat
    template, as /v1/chat/completions sees them). vLLM's request-side template overrides
    (`chat_template`, `chat_template_kwargs`, `tools`, media) are refused: the server owns
    the templates."""

    model: str | None = Field(None, description="Served model or alias (default: the server's --model).")
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = Field(
        None,
        description="Add the tokenizer's special tokens (e.g. BOS). Default: true for `prompt`, "
        "false for `messages` (the chat template adds its own), as vLLM.",
    )
    add_generation_prompt: bool = Field(True, description="Chat: end with the assistant turn's opening.")
    continue_final_message: bool = Field(
        False, description="Chat: leave the last message open (not with add_generation_prompt)."
    )
    return_token_strs: bool = Field(False, description="Also return each token's string.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ParamError("prompt", "send exactly one of 'prompt' or 'messages'")
        explicit = "add_generation_prompt" in self.model_fields_set
        if self.continue_final_message and self.add_generation_prompt and explicit:
            raise ParamError(
                "continue_final_message",
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Strict):
    model: str | None = Field(None, description="Served model or alias (default: the server's --model).")
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


class DetokenizeResponse(BaseModel):
    prompt: str

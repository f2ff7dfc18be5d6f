"""Reward scoring on the co-located engine (what ranks Best-of-N candidates, see server/bon.py,
and answers /v1/rewards): a reward model's pooling engine (one logit per reply) or a
generative verifier's generating engine (a greedy check per reply, scored at its verdict;
core/verifier.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from core.chat import reward_ids
from core.verifier import MAX_CHECK_TOKENS, TOP_LOGPROBS, check_messages, completion_score
from server.engines import EngineUnavailable, ManagedEngine
from server.errors import APIError, bad_request, unavailable


class RewardScorer:
    """Scores token sequences with a `*ForSequenceClassification` (one label) vLLM engine."""

    def __init__(self, engine: ManagedEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.in_flight = 0  # Best-of-N requests that will score with it (what retiring waits for)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count a request as using this reward model until it is ranked."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _require(self) -> Any:
        try:
            return self.engine.require()
        except EngineUnavailable as exc:
            raise unavailable(str(exc)) from exc

    def conversation_ids(self, messages: list[dict[str, str]], response: str) -> list[int]:
        """The full conversation with `response` as the last assistant turn, templated."""
        return reward_ids(self._require().get_tokenizer(), messages, response)

    # what each scorer calls itself and its engine in errors, and the decode room a sequence
    # must leave
    kind_label, engine_label, reserved_tokens = "reward model", "reward", 0

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        """Raw reward logits, one per sequence. All are submitted at once so the engine
        schedules them in the same batch."""
        from vllm import PoolingParams

        params = PoolingParams(task="classify", use_activation=False)

        async def one(engine: Any, i: int, ids: list[int]) -> float:
            final = None
            async for out in engine.encode({"prompt_token_ids": ids}, params, f"{request_id}-rm{i}"):
                final = out
            assert final is not None
            return float(final.outputs.data.reshape(-1)[0])

        return await self._each(sequences, one)

    async def _each(self, sequences: Sequence[list[int]], one: Any) -> list[float]:
        """`one(engine, i, ids)` for every sequence at once, on one engine instance for the
        whole call (even if a swap happens); too-long input and engine rejections are 400s."""
        from vllm.exceptions import VLLMClientError

        managed = self.engine
        engine = self._require()
        assert managed.info is not None
        limit = managed.info.max_model_len - self.reserved_tokens
        too_long = [i for i, s in enumerate(sequences) if len(s) > limit]
        if too_long:
            raise bad_request(
                f"sequences {too_long} exceed the {self.kind_label}'s context of "
                f"{managed.info.max_model_len} tokens"
                + (f" less the {self.reserved_tokens} it writes" if self.reserved_tokens else "")
            )
        try:
            with managed.guard(engine, f"the {self.engine_label} engine"):
                return list(await asyncio.gather(*(one(engine, i, s) for i, s in enumerate(sequences))))
        except APIError:
            raise
        except (VLLMClientError, ValueError) as exc:
            raise bad_request(f"{self.kind_label} rejected the input: {exc}") from exc


class VerifierScorer(RewardScorer):
    """Scores replies with a generative verifier: each reply's check is decoded greedily (all
    submitted at once, batched by the engine) and scored log p(right) - log p(wrong) at its
    verdict. Costs a short decode per candidate instead of a prefill, and pays where a score
    model cannot check the answer in one pass."""

    def conversation_ids(self, messages: list[dict[str, str]], response: str) -> list[int]:
        """The verifier's input: the check prompt for `response` to the last user turn."""
        tokenizer = self._require().get_tokenizer()
        return list(
            tokenizer.apply_chat_template(
                check_messages(messages, response),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )

    kind_label, engine_label, reserved_tokens = "verifier", "verifier", MAX_CHECK_TOKENS

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        """The verdict score of each check prompt, all decoded at once."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=0.0,
            max_tokens=MAX_CHECK_TOKENS,
            logprobs=TOP_LOGPROBS,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

        async def one(engine: Any, i: int, ids: list[int]) -> float:
            final = None
            async for out in engine.generate({"prompt_token_ids": ids}, params, f"{request_id}-vf{i}"):
                final = out
            assert final is not None
            return completion_score(final.outputs[0])

        return await self._each(sequences, one)


def make_scorer(engine: ManagedEngine, name: str, kind: str) -> RewardScorer:
    """The scorer of a reranker of `kind` (a registry kind; a bare directory counts as rm)."""
    return VerifierScorer(engine, name) if kind == "verifier" else RewardScorer(engine, name)

"""Reward scoring on the co-located pooling engine (what ranks Best-of-N candidates, see
server/bon.py, and answers /v1/rewards)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from core.chat import reward_ids
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

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        """Raw reward logits, one per sequence. All are submitted at once so the engine
        schedules them in the same batch."""
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError

        managed = self.engine  # one instance for the whole call, even if a swap happens
        engine = self._require()
        assert managed.info is not None
        too_long = [i for i, s in enumerate(sequences) if len(s) > managed.info.max_model_len]
        if too_long:
            raise bad_request(
                f"sequences {too_long} exceed the reward model's context of "
                f"{managed.info.max_model_len} tokens"
            )
        params = PoolingParams(task="classify", use_activation=False)

        async def one(i: int, ids: list[int]) -> float:
            final = None
            async for out in engine.encode({"prompt_token_ids": ids}, params, f"{request_id}-rm{i}"):
                final = out
            assert final is not None
            return float(final.outputs.data.reshape(-1)[0])

        try:
            with managed.guard(engine, "the reward engine"):
                return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(sequences))))
        except APIError:
            raise
        except (VLLMClientError, ValueError) as exc:
            raise bad_request(f"reward model rejected the input: {exc}") from exc

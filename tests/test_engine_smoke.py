"""The first real test: the prepared default model loads into vLLM's AsyncLLM and answers,
with the device's default dtype (the other engine tests pin float32, see tests/conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.engine_args import policy_engine_kwargs, resolve_dtype
from server.config import Settings
from server.engines import build_async_llm


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_async_llm_generates_from_prepared_model(default_model: Path) -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    settings = Settings(enforce_eager=True, dtype="auto")
    engine = build_async_llm(policy_engine_kwargs(settings.engine_options(), default_model))
    try:
        assert str(engine.model_config.dtype) == "torch." + resolve_dtype("auto")
        tokenizer = engine.get_tokenizer()
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        params = SamplingParams(temperature=0, max_tokens=16, output_kind=RequestOutputKind.FINAL_ONLY)

        async def run() -> str:
            final = None
            async for out in engine.generate({"prompt_token_ids": list(ids)}, params, "smoke"):
                final = out
            assert final is not None
            return final.outputs[0].text

        assert "Paris" in asyncio.run(run())
    finally:
        engine.shutdown()

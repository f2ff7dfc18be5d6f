"""vLLM's `/tokenize` and `/detokenize` (same paths, bodies and answers as vLLM's server), so
tools written for vLLM work here: `vllm bench serve` tokenizes its random prompts on the
server to check that its local tokenizer agrees with the served one.

The ids are the ones the generation routes would feed the engine: a `prompt` is encoded as
/v1/completions encodes it, `messages` go through the model's chat template as in
/v1/chat/completions (with vLLM's defaults, `count` is that request's `prompt_tokens`).
"""

from __future__ import annotations

from typing import Any

from server.engines import EngineUnavailable
from server.errors import bad_request, unavailable
from server.models import ModelRouter, ServedModel
from server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


def _model(router: ModelRouter, name: str | None) -> ServedModel:
    """The named model or alias; without a name the server's --model (the first served)."""
    if name is not None:
        return router.resolve(name)
    served = router.all()
    if not served:
        raise unavailable("no model is served")
    return served[0]


def _tokenizer(model: ServedModel) -> tuple[Any, int]:
    try:
        engine = model.engine.require()
    except EngineUnavailable as exc:
        raise unavailable(str(exc)) from exc
    assert model.engine.info is not None
    return engine.get_tokenizer(), model.engine.info.max_model_len


def tokenize(router: ModelRouter, req: TokenizeRequest) -> TokenizeResponse:
    tokenizer, max_model_len = _tokenizer(_model(router, req.model))
    if req.messages is not None:
        try:
            text = tokenizer.apply_chat_template(
                [m.as_dict() for m in req.messages],
                add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
                continue_final_message=req.continue_final_message,
                tokenize=False,
            )
        except Exception as exc:  # template errors are caused by the conversation's shape
            raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from exc
        ids = tokenizer.encode(text, add_special_tokens=bool(req.add_special_tokens))
    else:
        assert req.prompt is not None
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        ids = tokenizer.encode(req.prompt, add_special_tokens=add_special)
    return TokenizeResponse(
        count=len(ids),
        max_model_len=max_model_len,
        tokens=list(ids),
        token_strs=list(tokenizer.convert_ids_to_tokens(ids)) if req.return_token_strs else None,
    )


def detokenize(router: ModelRouter, req: DetokenizeRequest) -> DetokenizeResponse:
    tokenizer, _ = _tokenizer(_model(router, req.model))
    vocab = len(tokenizer)
    if any(t >= vocab for t in req.tokens):
        raise bad_request("tokens has ids outside the vocabulary", "tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(req.tokens))

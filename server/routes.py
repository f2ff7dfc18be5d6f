"""HTTP routes: thin wrappers that look up state, call serving, and pick the response type.

Every route declares the errors it can answer with (all in OpenAI's envelope, `ErrorResponse`)
and the streaming routes declare their `text/event-stream` 200, so /openapi.json tells
clients and the fuzz test what to expect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import __version__, tokenization
from server.deps import ApiKeyDep, StateDep
from server.errors import APIError, bad_request, documented_errors
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    RewardRequest,
    RewardResponse,
    RewardScore,
    RewardUsage,
    SamplingFields,
    TokenizeRequest,
    TokenizeResponse,
    new_id,
)
from server.serving import BaseServing, Resolved
from server.state import AppState

T = TypeVar("T")

openai_router = APIRouter(prefix="/v1", dependencies=[ApiKeyDep])
vllm_router = APIRouter(dependencies=[ApiKeyDep])  # vLLM's own paths, outside /v1
ops_router = APIRouter()


class ClientDisconnected(Exception):
    """The client left before its answer: answered 499 (nginx's "client closed request"),
    which nobody receives but the access log and `bonserve_requests_total` record, so a
    client's hang-up is not counted as a server error."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting the engine request) if the client leaves.

    The body is already read, so the next ASGI message can only be `http.disconnect`.
    """
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected
    return task.result()


def _sse(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def json_or_events(description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers JSON, or server-sent events when `stream` is true."""
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {},
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "`data: <chunk JSON>` events, then `data: [DONE]`.",
                    }
                },
            },
        }
    }


GENERATION_ERRORS = documented_errors(400, 401, 404, 413, 429, 500, 503, 504)


def _resolve(request: Request, body: SamplingFields, state: AppState, serving: BaseServing) -> Resolved:
    """Resolve the model and candidate count once, and record the fields for the access
    log and the request metrics (labels bounded to served names; mode "single" if refused)."""
    known = state.router.is_known(body.model)
    fields = request.scope["state"]["access_log"]
    fields.update(
        model=body.model,
        n=body.n,
        best_of=body.best_of,
        stream=body.stream,
        user=body.user,
        model_label=body.model if known else "unknown",
        mode="single",
    )
    resolved = serving.resolve(body)
    fields["mode"] = resolved.mode
    if resolved.mode == "bon":
        fields["bon_selector"] = resolved.selector
        if resolved.scorer is not None:
            fields["reward_model"] = resolved.scorer.name
    return resolved


@openai_router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**json_or_events("A chat completion, or its chunks as events."), **GENERATION_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep) -> Any:
    resolved = _resolve(request, body, state, state.chat)
    result = await cancel_on_disconnect(request, state.chat.create(body, resolved))
    return result if isinstance(result, ChatCompletionResponse) else _sse(result)


@openai_router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**json_or_events("A completion, or its chunks as events."), **GENERATION_ERRORS},
)
async def completions(body: CompletionRequest, request: Request, state: StateDep) -> Any:
    resolved = _resolve(request, body, state, state.completions)
    result = await cancel_on_disconnect(request, state.completions.create(body, resolved))
    return result if isinstance(result, CompletionResponse) else _sse(result)


@openai_router.post(
    "/rewards", response_model=RewardResponse, responses=documented_errors(400, 401, 404, 413, 429, 503)
)
async def rewards(body: RewardRequest, state: StateDep) -> RewardResponse:
    """Score conversations with a reward model (bonserve extension, for evaluation and
    debugging BoN): the same inputs and engine that rerank candidates. `model` names one of the
    server's reward models; without it, the default (--reward-model), else the only one."""
    rerank = state.rerank
    served = ", ".join(sorted(rerank.scorers)) or "none"
    if not rerank.scorers:
        raise APIError(
            404,
            "this server has no reward model (start it with --reward-model or --reward-models)",
            param="model",
            code="model_not_found",
        )
    if body.model is not None:
        scorer = rerank.scorer(body.model)
    elif rerank.default_scorer is not None or len(rerank.scorers) == 1:
        scorer = rerank.default_scorer or next(iter(rerank.scorers.values()))
    else:
        raise bad_request(f"this server has several reward models: name one as 'model' ({served})", "model")
    if scorer is None:
        raise APIError(
            404,
            f"The reward model '{body.model}' does not exist. Served: {served}",
            param="model",
            code="model_not_found",
        )
    inputs = [
        scorer.conversation_ids([m.as_dict() for m in item.messages], item.response) for item in body.items
    ]
    async with state.admission.slot(scorer.name, "rewards"):
        scores = await scorer.score(inputs, new_id("rwd"))
    tokens = sum(map(len, inputs))
    return RewardResponse(
        model=scorer.name,
        data=[RewardScore(index=i, reward=r) for i, r in enumerate(scores)],
        usage=RewardUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


@openai_router.get("/models", response_model=ModelList, responses=documented_errors(401))
async def list_models(state: StateDep) -> ModelList:
    """OpenAI's model list; each card's `bonserve` field says which reward model reranks that
    model's Best-of-N and what the rerank gate says of the pairing."""
    cards = []
    pairings = state.rerank.pairings(state.router)
    for m in state.router.all():
        info = m.engine.info
        cards.append(
            ModelCard(
                id=m.name,
                created=m.created,
                kind=m.kind,
                parent=m.parent,
                format=m.format,
                max_model_len=info.max_model_len if info else None,
                bonserve=pairings[m.name].card(),
            )
        )
    for alias, target in state.router.aliases().items():
        m = state.router.resolve(alias)
        cards.append(
            ModelCard(
                id=alias,
                created=m.created,
                kind="alias",
                parent=target,
                format=m.format,
                bonserve=pairings[alias].card(),
            )
        )
    return ModelList(data=cards)


@vllm_router.post(
    "/tokenize", response_model=TokenizeResponse, responses=documented_errors(400, 401, 404, 413, 503)
)
async def tokenize(body: TokenizeRequest, state: StateDep) -> TokenizeResponse:
    """vLLM's tokenizer endpoint: the ids a `prompt` or chat `messages` become for a served
    model (the same ids the generation routes feed the engine)."""
    return tokenization.tokenize(state.router, body)


@vllm_router.post(
    "/detokenize", response_model=DetokenizeResponse, responses=documented_errors(400, 401, 404, 413, 503)
)
async def detokenize(body: DetokenizeRequest, state: StateDep) -> DetokenizeResponse:
    """vLLM's detokenizer endpoint: the text of token ids."""
    return tokenization.detokenize(state.router, body)


@ops_router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Engine trouble shows in /ready, not here, so a
    restarting engine does not get the pod killed."""
    return {"status": "ok"}


@ops_router.get("/ready", responses={503: {"description": "Not ready: the same body, with ready false."}})
async def ready(state: StateDep) -> Response:
    body = {
        "ready": state.ready,
        "draining": state.draining,
        "engines": {name: e.status() for name, e in state.engines.items()},
        # --standby-engine's spare: shown, but not waited for (it starts after ready)
        "standby_engine": state.manager.standby_status() if state.manager else None,
        "requests": {"running": state.admission.running, "waiting": state.admission.waiting},
    }
    return JSONResponse(body, status_code=200 if state.ready else 503)


@ops_router.get("/version")
async def version() -> dict[str, str]:
    import vllm

    return {"bonserve": __version__, "vllm": vllm.__version__}


@ops_router.get("/metrics")
async def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

"""Admin API (`/admin/...`, admin key): registry listing, load/unload, alias promotion,
reward-model swap, and the server's model state. Logic lives in server/model_manager.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from server.deps import AdminKeyDep, StateDep
from server.errors import APIError, documented_errors
from server.model_manager import ModelManager, registry_listing
from server.state import AppState

admin_router = APIRouter(prefix="/admin", dependencies=[AdminKeyDep])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Body):
    model: str = Field(..., min_length=1, max_length=128, description="Registry entry name.")


class PromoteRequest(_Body):
    alias: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str = Field(..., min_length=1, max_length=128)
    unload_previous: bool = Field(
        True, description="Free the previous target once drained (if nothing else uses it)."
    )
    reward_model: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Reward model (registry entry) that reranks the alias's Best-of-N, recorded with "
        "the alias in one write; its engine is started first. Unset: the server's rules choose "
        "(--reward-models, the reward model trained for the policy, --reward-model).",
    )
    force: bool = Field(
        False,
        description="Pair even when the rerank gate refuses the pairing (its recorded held-out gap "
        "captured is <= 0); the pairing is then flagged as forced everywhere.",
    )


class PromoteRewardRequest(ModelRef):
    force: bool = Field(
        False,
        description="Make it the default even when the rerank gate refuses it for a policy it would "
        "rerank (recorded held-out gap captured <= 0); those pairings then do not rerank "
        "(unless --allow-unhelpful-reward-model) and show allowed: false in /v1/models.",
    )


def _manager(state: AppState) -> ModelManager:
    if state.manager is None:
        raise APIError(503, "model management is not available on this server", type="service_unavailable")
    return state.manager


@admin_router.get("/state", responses=documented_errors(401, 403, 503))
async def admin_state(state: StateDep) -> dict[str, Any]:
    return _manager(state).state()


@admin_router.get("/registry", responses=documented_errors(401, 403, 503))
async def admin_registry(state: StateDep) -> dict[str, Any]:
    return registry_listing(_manager(state).registry)


@admin_router.post("/models/load", responses=documented_errors(400, 401, 403, 404, 409, 413, 422, 503))
async def admin_load(body: ModelRef, state: StateDep) -> dict[str, Any]:
    served = await _manager(state).load(body.model)
    return {"loaded": served.name, "kind": served.kind, "format": served.format}


@admin_router.post("/models/unload", responses=documented_errors(400, 401, 403, 404, 409, 413, 503))
async def admin_unload(body: ModelRef, state: StateDep) -> dict[str, Any]:
    await _manager(state).unload(body.model)
    return {"unloaded": body.model}


@admin_router.post("/aliases/promote", responses=documented_errors(400, 401, 403, 404, 409, 413, 422, 503))
async def admin_promote(body: PromoteRequest, state: StateDep) -> dict[str, Any]:
    result = await _manager(state).promote(
        body.alias, body.model, body.unload_previous, reward_model=body.reward_model, force=body.force
    )
    return result.__dict__


@admin_router.post("/reward/promote", responses=documented_errors(400, 401, 403, 404, 409, 413, 422, 503))
async def admin_promote_reward(body: PromoteRewardRequest, state: StateDep) -> dict[str, Any]:
    result = await _manager(state).promote_reward(body.model, force=body.force)
    return result.__dict__

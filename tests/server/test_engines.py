"""server/engines.py over named fakes: death is reported by the engine wrapper alone
(`ManagedEngine.guard` for requests, the watchdog otherwise) and restarts once per instance."""

from __future__ import annotations

import asyncio

import pytest
from vllm.v1.engine.exceptions import EngineDeadError

from server.engines import EngineState, ManagedEngine
from server.errors import APIError
from tests.server.fakes import FakeAsyncLLM


async def started() -> tuple[ManagedEngine, list[FakeAsyncLLM]]:
    made: list[FakeAsyncLLM] = []

    def factory() -> FakeAsyncLLM:
        made.append(FakeAsyncLLM())
        return made[-1]

    engine = ManagedEngine("policy", factory, restart_backoff_s=0, watch_interval_s=60)
    await engine.start()
    return engine, made


async def wait_running(engine: ManagedEngine) -> None:
    for _ in range(200):
        if engine.state == EngineState.RUNNING and engine.restarts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine is {engine.state}")


async def test_guard_turns_engine_death_into_503_and_restarts_that_instance() -> None:
    engine, made = await started()
    instance = engine.require()
    with pytest.raises(APIError) as err, engine.guard(instance, "the engine serving 'fake'"):
        raise EngineDeadError()
    assert err.value.status == 503 and err.value.code == "engine_unavailable"
    assert err.value.message == "the engine serving 'fake' died and is restarting; retry"
    assert err.value.headers["Retry-After"]
    await wait_running(engine)
    assert engine.restarts == 1 and engine.engine is made[1]
    await engine.stop()


async def test_guard_passes_other_errors_unchanged() -> None:
    engine, made = await started()
    with pytest.raises(ValueError, match="bad request"), engine.guard(engine.require(), "x"):
        raise ValueError("bad request")
    await asyncio.sleep(0.05)
    assert engine.restarts == 0 and len(made) == 1
    await engine.stop()


async def test_duplicate_death_reports_restart_once() -> None:
    """The watchdog and every failed request may report the same dead engine; only the
    first report restarts it, and reports about a replaced instance are ignored."""
    engine, made = await started()
    dead = engine.engine
    await asyncio.gather(*(engine.report_dead("boom", dead) for _ in range(3)))
    await engine.report_dead("late report", dead)
    assert engine.restarts == 1 and len(made) == 2 and engine.engine is made[1]
    await engine.stop()

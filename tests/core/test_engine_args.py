"""core/engine_args.py: the server's engines and the offline ones get the same arguments."""

from __future__ import annotations

from pathlib import Path

from core.engine_args import (
    EngineOptions,
    offline,
    policy_engine_kwargs,
    reward_engine_env,
    reward_engine_kwargs,
)
from server.config import Settings


def test_the_server_and_the_offline_engines_share_defaults() -> None:
    assert Settings().engine_options() == EngineOptions()


def test_policy_kwargs_with_and_without_lora() -> None:
    plain = policy_engine_kwargs(EngineOptions(), Path("/m"), "name")
    assert plain["model"] == "/m" and plain["dtype"] == "float32" and "enable_lora" not in plain
    assert plain["kv_cache_memory_bytes"] == 1 << 30 and plain["max_num_batched_tokens"] >= 2048
    lora = policy_engine_kwargs(EngineOptions().for_adapter(16), Path("/m"))
    assert (lora["enable_lora"], lora["max_loras"], lora["max_lora_rank"]) == (True, 1, 16)
    assert policy_engine_kwargs(EngineOptions().for_adapter(12), Path("/m"))["max_lora_rank"] == 16


def test_reward_kwargs_and_thread_placement() -> None:
    kwargs = reward_engine_kwargs(EngineOptions(enforce_eager=True), Path("/rm"))
    assert kwargs["runner"] == "pooling" and kwargs["enforce_eager"] is True
    assert reward_engine_env(2) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}


def test_offline_drops_the_async_only_option() -> None:
    out = offline(policy_engine_kwargs(EngineOptions(), Path("/m")))
    assert "enable_log_requests" not in out and out["disable_log_stats"] is True

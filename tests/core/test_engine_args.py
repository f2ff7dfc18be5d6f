"""core/engine_args.py: the server's engines and the offline ones get the same arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.engine_args import (
    CPU_BLOCK_SIZE,
    DTYPE_ENV,
    EngineOptions,
    block_size,
    cpu_flags,
    default_dtype,
    offline,
    policy_engine_kwargs,
    resolve_dtype,
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


def test_kv_block_size_follows_the_device_unless_given() -> None:
    assert block_size(None, cuda=False) == CPU_BLOCK_SIZE == 32  # prefix caching on short prompts
    assert block_size(None, cuda=True) is None  # vLLM's own choice on a GPU
    assert block_size(128, cuda=False) == 128 and block_size(16, cuda=True) == 16
    assert policy_engine_kwargs(EngineOptions(kv_block_size=64), Path("/m"))["block_size"] == 64
    assert reward_engine_kwargs(EngineOptions(kv_block_size=64), Path("/rm"))["block_size"] == 64
    with pytest.raises(ValueError, match="--kv-block-size"):
        EngineOptions(engine_args={"block_size": 16})
    assert Settings(kv_block_size=64).engine_options().kv_block_size == 64


def test_offline_drops_the_async_only_option() -> None:
    out = offline(policy_engine_kwargs(EngineOptions(), Path("/m")))
    assert "enable_log_requests" not in out and out["disable_log_stats"] is True


def test_auto_dtype_follows_the_device() -> None:
    assert resolve_dtype("auto", cuda=True, flags=frozenset()) == "bfloat16"
    assert resolve_dtype("auto", cuda=False, flags={"avx2", "fma"}) == "float32"
    assert resolve_dtype("auto", cuda=False, flags={"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", cuda=False, flags={"amx_bf16"}) == "bfloat16"
    # a dtype given is used as given, whatever the device
    assert resolve_dtype("float32", cuda=True, flags={"avx512_bf16"}) == "float32"
    assert resolve_dtype("bfloat16", cuda=False, flags=set()) == "bfloat16"


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx512_bf16\n\nprocessor\t: 1\nflags : fpu\n"
    )
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_dtype_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    assert default_dtype() == "auto" and EngineOptions().dtype == "auto" and Settings().dtype == "auto"
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    assert EngineOptions().dtype == "bfloat16" and Settings().engine_options().dtype == "bfloat16"


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineOptions(dtype="fp8")
    with pytest.raises(ValidationError, match="must be one of auto, float32"):
        Settings(dtype="half-ish")

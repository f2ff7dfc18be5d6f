"""Engine kwargs from settings (no engine): the GPU knobs reach vLLM only when set, each engine
gets its own memory and batch sizes, and `engine_args` merges last but cannot take over what
bonserve owns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.engine_args import (
    OWNED_ENGINE_ARGS,
    EngineOptions,
    check_engine_args,
    parse_engine_args,
    policy_engine_kwargs,
    reward_engine_kwargs,
)
from server.config import Settings
from server.engine_config import EngineBuilder, check_engine_arg_names

MODEL = Path("/models/m")


def test_cpu_defaults_pass_no_gpu_knobs() -> None:
    """Unset, gpu_memory_utilization and max_num_seqs stay vLLM's defaults: on CPU the KV cache
    is explicit and vLLM's default batch applies, as before these settings existed."""
    settings = Settings()
    builder = EngineBuilder(settings)
    for kwargs in (builder.policy_kwargs(MODEL, "p"), builder.reward_kwargs(MODEL, "r")):
        assert "gpu_memory_utilization" not in kwargs and "max_num_seqs" not in kwargs
        assert kwargs["kv_cache_memory_bytes"] == int(settings.kv_cache_gib * (1 << 30))
    assert builder.reward_kwargs(MODEL, "r")["runner"] == "pooling"


def test_each_engine_gets_its_own_memory_and_batch() -> None:
    settings = Settings(
        kv_cache_gib=4,
        reward_kv_cache_gib=1.5,
        gpu_memory_utilization=0.35,
        reward_gpu_memory_utilization=0.2,
        max_num_seqs=512,
        reward_max_num_seqs=128,
        max_loras=2,
    )
    builder = EngineBuilder(settings)
    policy, reward = builder.policy_kwargs(MODEL, "p"), builder.reward_kwargs(MODEL, "r")
    assert policy["kv_cache_memory_bytes"] == 4 << 30
    assert reward["kv_cache_memory_bytes"] == int(1.5 * (1 << 30))
    assert (policy["gpu_memory_utilization"], reward["gpu_memory_utilization"]) == (0.35, 0.2)
    assert (policy["max_num_seqs"], reward["max_num_seqs"]) == (512, 128)
    assert policy["enable_lora"] and policy["max_loras"] == 2
    assert "enable_lora" not in reward  # the scorer never serves adapters


def test_reward_kv_cache_defaults_to_the_policys() -> None:
    settings = Settings(kv_cache_gib=3, gpu_memory_utilization=0.4)
    reward = EngineBuilder(settings).reward_kwargs(MODEL, "r")
    assert reward["kv_cache_memory_bytes"] == 3 << 30
    assert "gpu_memory_utilization" not in reward  # per engine: the policy's value is not copied


def test_engine_args_merge_last_into_both_engines() -> None:
    extra = '{"enable_prefix_caching": false, "max_num_batched_tokens": 16384, "kv_cache_dtype": "fp8"}'
    settings = Settings(engine_args=extra)
    builder = EngineBuilder(settings)
    for kwargs in (builder.policy_kwargs(MODEL, "p"), builder.reward_kwargs(MODEL, "r")):
        assert kwargs["enable_prefix_caching"] is False
        assert kwargs["kv_cache_dtype"] == "fp8"
        assert kwargs["max_num_batched_tokens"] == 16384  # overrides bonserve's derived value


def test_offline_engines_take_the_same_knobs() -> None:
    opts = EngineOptions(gpu_memory_utilization=0.5, max_num_seqs=64, engine_args={"swap_space": 0})
    for kwargs in (policy_engine_kwargs(opts, MODEL), reward_engine_kwargs(opts, MODEL)):
        assert kwargs["gpu_memory_utilization"] == 0.5
        assert kwargs["max_num_seqs"] == 64 and kwargs["swap_space"] == 0


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("[1, 2]", "JSON object"),
        ('"enable_prefix_caching"', "JSON object"),
        ("{not json", "not valid JSON"),
        ('{"model": "/elsewhere"}', "set by bonserve"),
        ('{"served_model_name": "x"}', "set by bonserve"),
        ('{"dtype": "float16"}', "--dtype"),
        ('{"gpu_memory_utilization": 0.5}', "--gpu-memory-utilization"),
        ('{"enable-prefix-caching": true}', "snake_case"),
    ],
)
def test_engine_args_are_refused_when_malformed_or_owned(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(engine_args=text)


def test_engine_args_options_are_checked_too() -> None:
    """EngineOptions built by a trainer cannot carry owned keys either."""
    with pytest.raises(ValueError, match="set by bonserve"):
        EngineOptions(engine_args={"max_loras": 4})
    assert check_engine_args({}) == {} and parse_engine_args("  ") == {} and parse_engine_args(None) == {}


def test_owned_keys_are_real_engine_arguments() -> None:
    """The refusal list names real AsyncEngineArgs fields (so it tracks vLLM's names), and
    unknown names are caught before an engine starts."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert set(OWNED_ENGINE_ARGS) <= fields, set(OWNED_ENGINE_ARGS) - fields
    check_engine_arg_names(["enable_prefix_caching", "max_num_batched_tokens"])
    with pytest.raises(ValueError, match="enable_prefix_cashing"):
        check_engine_arg_names(["enable_prefix_cashing"])


def test_settings_fields_become_flags() -> None:
    from bonserve.cli import make_parser, settings_from_args

    args = make_parser().parse_args(
        [
            "serve",
            "--gpu-memory-utilization",
            "0.3",
            "--reward-gpu-memory-utilization",
            "0.2",
            "--max-num-seqs",
            "256",
            "--reward-kv-cache-gib",
            "0.5",
            "--engine-args",
            '{"enable_prefix_caching": true}',
        ]
    )
    settings = settings_from_args(args)
    assert settings.gpu_memory_utilization == 0.3 and settings.reward_gpu_memory_utilization == 0.2
    assert settings.max_num_seqs == 256 and settings.reward_kv_cache_gib == 0.5
    assert settings.engine_options().engine_args == {"enable_prefix_caching": True}


def test_gpu_memory_utilization_bounds() -> None:
    for bad in (0, 1.5):
        with pytest.raises(ValidationError):
            Settings(gpu_memory_utilization=bad)

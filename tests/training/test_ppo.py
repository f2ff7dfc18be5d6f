"""`bonserve train ppo`: bad configurations; short real runs on the tiny random model of
conftest.py (HF rollouts) whose programmatic reward (the digit fraction) must rise, against a
control that cannot learn; resuming; and vLLM rollouts on the real converted model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.flags import ConfigError
from core.lora import check_servable_adapter
from core.registry import Registry
from training import ppo
from training.ppo_config import PPOConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward": "rm"}, "needs --reward-model"),
        ({"reward": "judge"}, "use one of"),
        ({"data": "p.jsonl", "task": "arithmetic"}, "not both"),
        ({"data": "p.jsonl"}, "reward='gold' needs a --task"),
        ({"batch_size": 12, "mini_batch_size": 8}, "not a multiple of mini_batch_size"),
        ({"mini_batch_size": 8, "gradient_accumulation_steps": 3}, "gradient_accumulation_steps=3"),
        ({"full": True, "rollout_backend": "vllm"}, "--rollout-backend hf"),
        ({"temperature": 0.0}, "temperature=0.0 is out of range"),
        ({"gamma": 1.5}, "gamma=1.5"),
        ({"target_kl": -1.0}, "target_kl"),
        ({"kl_estimator": "k2"}, "use k1 or k3"),
        ({"lora_r": 5}, "LoRA ranks"),
        ({"bf16": True}, "float32"),
        ({"max_time_s": 0.0}, "max_time_s=0.0: must be > 0"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PPOConfig(name="p", **kwargs)


def test_auto_backend_is_vllm_only_for_lora_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PPOConfig(name="p").backend == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert PPOConfig(name="p").backend == "vllm"
    assert PPOConfig(name="p", full=True).backend == "hf"
    assert PPOConfig(name="p", rollout_backend="vllm").backend == "vllm"
    assert PPOConfig(name="p").task == "arithmetic"


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from bonserve.cli import main

    assert main(["train", "ppo", "--name", "p", "--reward", "rm"]) == 1
    assert "needs --reward-model" in capsys.readouterr().err


TINY_PPO = {
    "base": "tiny",
    "task": "digits",
    "rollout_backend": "hf",
    "batch_size": 16,
    "mini_batch_size": 8,
    "num_ppo_epochs": 2,
    "max_new_tokens": 16,
    "max_length": 64,
    "kl_coef": 0.01,
    "seed": 0,
}


def _log(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / ppo.LOG_FILE).read_text().splitlines()]


def _ppo_curve(tiny: Registry, run_dir: Path, name: str, steps: int, learning_rate: float) -> list[float]:
    ppo.run(
        PPOConfig(
            name=name,
            registry=str(tiny.root),
            output_dir=str(run_dir),
            max_steps=steps,
            save_steps=steps,
            learning_rate=learning_rate,
            **TINY_PPO,
        )
    )
    log = _log(run_dir)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    for key in (
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/non_score_reward",
        "policy/clipfrac_avg",
        "policy/approxkl_avg",
        "val/vpred",
        "val/clipfrac_avg",
        "policy/entropy_avg",
        "loss/value_avg",
        "completions/mean_length",
    ):
        assert all(math.isfinite(r[key]) for r in log), key
    return [r["rewards/gold/mean"] for r in log]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_raises_the_reward_on_a_tiny_model(tiny: Registry, tmp_path: Path) -> None:
    """24 iterations on the tiny random model with the digit-fraction reward, against a
    control run at learning rate 1e-9 in the same test (the same sampling noise without
    learning). The verdict is the margin between the two over the last quarter of the run,
    not a learning curve measured on another machine: curves on a tiny model differ across
    CPU instruction sets (the same code rose 0.08 -> 0.53 in 12 iterations on an AVX-512 box
    and 0.08 -> 0.15 on an AVX2 one).

    Measured on a 2-core AVX2 box (mean of the last 6 iterations): learner 0.39, control
    0.08; the test asks for a margin of 0.10 and a learner that rose by 0.10 from its first 3.
    """
    steps = 24
    learner = _ppo_curve(tiny, tmp_path / "learn", "t-ppo", steps, 2e-2)
    control = _ppo_curve(tiny, tmp_path / "control", "t-ppo-control", steps, 1e-9)
    print(f"learner {[round(c, 3) for c in learner]}\ncontrol {[round(c, 3) for c in control]}")
    tail = steps // 4
    assert _mean(control[-tail:]) - _mean(control[:3]) < 0.06, f"the control moved: {control}"
    assert _mean(learner[-tail:]) - _mean(control[-tail:]) >= 0.10, (
        f"no margin over the no-learning control: learner {learner}, control {control}"
    )
    assert _mean(learner[-tail:]) - _mean(learner[:3]) >= 0.10, f"reward did not rise: {learner}"
    entry = Registry(tiny.root).load("t-ppo")
    assert (entry.manifest.kind, entry.manifest.format) == ("ppo", "lora")
    check_servable_adapter(entry.path)
    assert entry.manifest.metrics["step"] == steps and entry.manifest.extra["reward"] == "gold"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_ppo_resumes_from_its_checkpoint(tiny: Registry, tmp_path: Path) -> None:
    """One iteration and its checkpoint, then --resume to two: the second run starts where
    the first stopped (a fresh start into the same run directory is refused)."""
    common = {
        "name": "t-ppo-resume",
        "registry": str(tiny.root),
        "output_dir": str(tmp_path / "run"),
        "save_steps": 1,
        **TINY_PPO,
    }
    ppo.PPOTrainer(PPOConfig(max_steps=1, **common), tiny).train()
    assert (tmp_path / "run" / "checkpoint-1" / "ppo_state.json").is_file()
    with pytest.raises(ConfigError, match="--resume"):
        ppo.PPOTrainer(PPOConfig(max_steps=2, **common), tiny)
    resumed = ppo.PPOTrainer(PPOConfig(max_steps=2, resume=True, **common), tiny)
    assert resumed.state.step == 1 and resumed.state.episode == 16
    metrics = resumed.train()
    assert metrics["step"] == 2 and metrics["episode"] == 32
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2]
    entry = resumed.save_entry(metrics)
    assert entry is not None and entry.manifest.extra["rollout_backend"] == "hf"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread", "digits_task")
def test_wall_clock_budget_ends_the_run_with_a_checkpoint(tiny: Registry, tmp_path: Path) -> None:
    entry = ppo.run(
        PPOConfig(
            name="t-ppo-budget",
            registry=str(tiny.root),
            output_dir=str(tmp_path / "run"),
            max_steps=20,
            save_steps=20,
            max_time_s=0.001,
            **TINY_PPO,
        )
    )
    assert [r["step"] for r in _log(tmp_path / "run")] == [1]
    assert (tmp_path / "run" / "checkpoint-1" / "ppo_state.json").is_file()
    assert entry is not None and entry.manifest.metrics["step"] == 1


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_rollouts_run_the_current_adapter(tmp_registry: Registry, tmp_path: Path) -> None:
    """Two iterations on the real model with vLLM rollouts: the second samples with the
    adapter after one update (LoRA B starts at zero, so a non-zero B proves the engine got the
    trained weights, not the initial ones) and the entry is servable."""
    import torch
    from safetensors.torch import load_file

    config = PPOConfig(
        name="vllm-ppo",
        registry=str(tmp_registry.root),
        output_dir=str(tmp_path / "run"),
        rollout_backend="vllm",
        batch_size=8,
        mini_batch_size=8,
        num_ppo_epochs=1,
        max_new_tokens=8,
        max_steps=2,
        save_steps=2,
        n_prompts=16,
        enforce_eager=True,
    )
    entry = ppo.run(config)
    assert entry is not None and entry.manifest.extra["rollout_backend"] == "vllm"
    check_servable_adapter(entry.path)
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2]
    served = load_file(tmp_path / "run" / "rollout-adapter" / "adapter_model.safetensors")
    lora_b = [t for k, t in served.items() if "lora_B" in k]
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)

"""`bonserve train ppo`: bad configurations, and a short real run that raises a reward.

The run uses the real converted SmolLM2-135M with a LoRA policy and vLLM rollouts, and a
programmatic reward (the share of digits in the reply to an addition prompt: "19" scores 1,
"The answer is 19." 0.14), so a rise is both cheap to get and impossible to fake.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from training.common import ConfigError
from training.ppo import PPOConfig, cut_at_stop
from training.tasks import TASKS
from training.tasks.arithmetic import ArithmeticTask
from training.tasks.base import Example


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


def test_cut_at_stop() -> None:
    assert cut_at_stop([5, 6, 2, 9], {2}) == ([5, 6, 2], True)
    assert cut_at_stop([5, 6, 7], {2}) == ([5, 6, 7], False)


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    assert main(["train", "ppo", "--name", "p", "--reward", "rm"]) == 1
    assert "needs --reward-model" in capsys.readouterr().err


class DigitShareTask(ArithmeticTask):
    """Additions whose reward is the share of non-space characters that are digits."""

    name: ClassVar[str] = "digit-share"

    def reward(self, example: Example, completion: str) -> float:
        chars = [c for c in completion if not c.isspace()]
        return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def mean_reward(
    policy: Any, tokenizer: Any, task: DigitShareTask, examples: list[Example], seed: int
) -> float:
    """Expected reward estimated from 4 samples per prompt with transformers."""
    import torch

    torch.manual_seed(seed)
    scores = []
    for ex in examples:
        ids = tokenizer.apply_chat_template(
            task.messages(ex), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = policy.generate(
                **ids,
                do_sample=True,
                temperature=0.7,
                top_k=0,
                max_new_tokens=24,
                num_return_sequences=4,
                pad_token_id=tokenizer.eos_token_id,
            )
        for row in out[:, ids["input_ids"].shape[1] :]:
            scores.append(task.reward(ex, tokenizer.decode(row, skip_special_tokens=True)))
    return sum(scores) / len(scores)


@pytest.mark.engine
@pytest.mark.slow
def test_ppo_with_vllm_rollouts_raises_the_reward(
    tmp_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import ppo
    from training.common import check_vllm_adapter

    task = DigitShareTask()
    monkeypatch.setitem(TASKS, task.name, task)
    config = PPOConfig(
        name="digits-ppo",
        task=task.name,
        registry=str(tmp_registry.root),
        output_dir=str(tmp_path / "run"),
        batch_size=16,
        mini_batch_size=8,
        num_ppo_epochs=2,
        max_steps=6,
        max_new_tokens=24,
        learning_rate=1e-3,
        kl_coef=0.01,
        save_steps=3,
        rollout_backend="vllm",
        enforce_eager=True,
        seed=0,
    )
    entry = ppo.run(config)
    assert entry is not None and entry.manifest.kind == "ppo" and entry.manifest.format == "lora"
    check_vllm_adapter(entry.path)
    log = [json.loads(line) for line in (tmp_path / "run" / ppo.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for key in (
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "policy/clipfrac_avg",
        "policy/approxkl_avg",
        "val/vpred",
        "val/clipfrac_avg",
        "policy/entropy_avg",
        "completions/mean_length",
        "rewards/gold/mean",
    ):
        assert all(key in r for r in log), key
    assert entry.manifest.metrics["step"] == 6
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    # The measurable rise, on held-out prompts, sampled with transformers (not the training engine).
    base_path = tmp_registry.load(entry.manifest.base_model).path
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    examples = task.examples("heldout", 16)
    before = mean_reward(base, tokenizer, task, examples, seed=1)
    tuned = PeftModel.from_pretrained(base, entry.path).eval()
    after = mean_reward(tuned, tokenizer, task, examples, seed=1)
    assert after > before + 0.1, (before, after)


@pytest.mark.slow
def test_ppo_resumes_from_its_checkpoint_with_hf_rollouts(
    tmp_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One iteration and its checkpoint, then --resume to two: the second run starts where the
    first stopped (a fresh start into the same run directory is refused)."""
    from training import ppo

    task = DigitShareTask()
    monkeypatch.setitem(TASKS, task.name, task)
    common = {
        "name": "digits-hf",
        "task": task.name,
        "registry": str(tmp_registry.root),
        "output_dir": str(tmp_path / "run"),
        "batch_size": 8,
        "mini_batch_size": 8,
        "num_ppo_epochs": 1,
        "max_new_tokens": 8,
        "rollout_backend": "hf",
        "save_steps": 1,
        "n_prompts": 16,
    }
    trainer = ppo.PPOTrainer(PPOConfig(max_steps=1, **common), tmp_registry)
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-1" / "ppo_state.json").is_file()
    with pytest.raises(ConfigError, match="--resume"):
        ppo.PPOTrainer(PPOConfig(max_steps=2, **common), tmp_registry)
    resumed = ppo.PPOTrainer(PPOConfig(max_steps=2, resume=True, **common), tmp_registry)
    assert resumed.state.step == 1 and resumed.state.episode == 8
    metrics = resumed.train()
    assert metrics["step"] == 2 and metrics["episode"] == 16
    entry = resumed.save_entry(metrics)
    assert entry is not None and entry.manifest.extra["rollout_backend"] == "hf"

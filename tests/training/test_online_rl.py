"""Online RL (`train grpo` / `train rloo`): configs refuse bad values, the reward functions,
and short real TRL runs whose reward must rise.

The real runs use a tiny Llama (2 layers, hidden 64, random weights) built here with a
character-level tokenizer and the SmolLM2 chat template, on a test task whose gold reward is
the fraction of digits in the completion. Why not the SmolLM2 tokenizer: measured, with its
49k-token vocabulary the random tiny model sampled almost no digits in 12 GRPO steps (reward 0
throughout, nothing to learn from) and each step took ~4 s; with 98 characters the digit
fraction starts near 0.07 and varies within each group, so GRPO has a signal. Torch runs
single-threaded in these runs: a model this small gains nothing from threads, and two OpenMP
threads on cores a vLLM engine also pins made a step ~30x slower here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bonserve.cli import main as bonserve
from core.flags import ConfigError
from core.lora import VLLM_LORA_RANKS, check_servable_adapter
from core.registry import Registry, RegistryError
from tests.training.conftest import char_tokenizer
from training.data import DataError, write_jsonl
from training.grpo import run as run_grpo
from training.grpo_config import GRPOConfig
from training.online_rl import prompt_rows
from training.reward_fns import (
    GoldReward,
    RewardFunction,
    RewardModelReward,
    TRLRewardFunction,
    build_reward_functions,
    decode_example,
    encode_example,
    to_trl,
    weighted_rewards,
)
from training.rloo import run as run_rloo
from training.rloo_config import RLOOConfig
from training.tasks import get_task

# A short real run: 4 prompts x 4 completions of 16 tokens per step, one micro-batch.
TINY_RUN = {
    "task": "digits",
    "batch_size": 4,
    "num_generations": 4,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 16,
    "max_length": 64,
    "learning_rate": 5e-3,
    "seed": 0,
}

pytestmark = pytest.mark.usefixtures("digits_task")


def _cfg(cls: type = GRPOConfig, **kw: Any) -> Any:
    return cls(**{"name": "x", **kw})


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_generations": 1}, "num_generations=1"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"beta": -0.1}, "beta=-0.1"),
        ({"reward": "judge"}, "reward='judge'"),
        ({"reward": "rm"}, "needs --reward-model"),
        ({"reward": "both"}, "needs --reward-model"),
        ({"reward_model": "arith-rm"}, "unused with reward='gold'"),
        ({"gold_weight": -1.0}, "gold_weight=-1.0"),
        ({"gold_weight": 0.0}, "nothing left to optimise"),
        (
            {"reward": "both", "reward_model": "r", "gold_weight": 0.0, "rm_weight": 0.0},
            "nothing left to optimise",
        ),
        ({"data": "p.jsonl"}, "needs --task"),
        ({"data": "  "}, "give a prompt file"),
        ({"task": "chess"}, "unknown task 'chess'"),
        ({"n_prompts": 0}, "n_prompts=0"),
        ({"gradient_accumulation_steps": 3}, "does not divide the 16 x 8 = 128 completions"),
        ({"max_completion_length": 512}, "max_completion_length=512"),
        ({"lora_r": 12}, "lora_r=12"),
        ({"name": "../escape"}, "invalid checkpoint name"),
    ],
)
@pytest.mark.parametrize("cls", [GRPOConfig, RLOOConfig])
def test_bad_values_are_refused_with_a_clear_message(cls: type, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        _cfg(cls, **kw)


def test_defaults_are_the_design_recipe_and_trl_accepts_them(tmp_path: Path) -> None:
    import trl

    cfg = _cfg(output_dir=str(tmp_path))
    assert (cfg.task, cfg.reward, cfg.lora_r) == ("arithmetic", "gold", 16)
    assert (cfg.batch_size, cfg.num_generations) == (16, 8)
    assert (cfg.temperature, cfg.beta, cfg.learning_rate, cfg.max_steps) == (0.8, 0.04, 2e-4, 60)
    assert cfg.reward_weights() == {"gold": 1.0}
    args = trl.GRPOConfig(**cfg.online_kwargs())
    # 16 prompts x 8 completions per optimizer step, in 8 micro-batches of 16 completions
    assert args.per_device_train_batch_size == 16
    assert (args.steps_per_generation, args.generation_batch_size) == (8, 128)
    assert args.bf16 is False and args.use_vllm is False and args.beta == 0.04
    rloo = trl.RLOOConfig(**_cfg(RLOOConfig, output_dir=str(tmp_path)).online_kwargs())
    assert rloo.generation_batch_size == 128 and rloo.beta == 0.04
    # reward "rm": the gold reward stays, at weight 0, to be logged beside the proxy
    assert _cfg(reward="rm", reward_model="r").reward_weights() == {"gold": 0.0, "rm": 1.0}
    assert _cfg(reward="both", reward_model="r", rm_weight=0.5).reward_weights() == {"gold": 1.0, "rm": 0.5}
    assert _cfg(data="p.jsonl", reward="rm", reward_model="r").reward_weights() == {"rm": 1.0}


def test_cli_errors_are_one_line_and_prompts_is_an_alias_of_data(capsys: pytest.CaptureFixture[str]) -> None:
    from training.scripts.grpo import make_parser

    assert make_parser().parse_args(["--name", "x", "--prompts", "p.jsonl"]).data == "p.jsonl"
    assert bonserve(["train", "rloo", "--task", "arithmetic"]) == 1
    assert "missing required option(s): --name" in capsys.readouterr().err
    assert bonserve(["train", "grpo", "--name", "x", "--reward", "rm"]) == 1
    assert "reward='rm' needs --reward-model" in capsys.readouterr().err


# --------------------------------------------------------------------------- reward functions


class ConstantReward(RewardFunction):
    """A fake reward (named as such) that scores every completion the same."""

    name = "const"

    def __call__(self, messages_list, completions, examples):
        return [2.0] * len(completions)


def test_gold_reward_and_weighted_sum_with_a_log_only_function() -> None:
    task = get_task("arithmetic")
    ex = task.examples("train", 1)[0]
    msgs = task.messages(ex)
    right, wrong = str(ex.meta["answer"]), str(ex.meta["answer"] + 1)
    gold = GoldReward(task, weight=0.0)
    assert gold([msgs] * 3, [right, wrong, right], [ex, ex, None]) == [1.0, 0.0, None]
    totals, per = weighted_rewards([gold, ConstantReward(0.5)], [msgs] * 2, [right, wrong], [ex, ex])
    assert totals == [1.0, 1.0]  # gold logged at weight 0, not added
    assert per == {"gold": [1.0, 0.0], "const": [2.0, 2.0]}
    totals, _ = weighted_rewards([GoldReward(task, 3.0)], [msgs] * 2, [right, right], [ex, None])
    assert totals == [3.0, 0.0]  # None (unscorable) contributes nothing


def test_trl_adapter_decodes_the_example_column_and_is_logged_under_its_name() -> None:
    from trl.trainer.utils import get_callable_name

    task = get_task("arithmetic")
    ex = task.examples("train", 1)[0]
    assert decode_example(encode_example(ex)) == ex and decode_example("") is None
    funcs, weights = to_trl([GoldReward(task, 0.0), ConstantReward(1.0)])
    assert [get_callable_name(f) for f in funcs] == ["gold", "const"] and weights == [0.0, 1.0]
    echo = f"{ex.meta['a']} + {ex.meta['b']} = {ex.meta['answer']}"
    completions = [[{"role": "assistant", "content": echo}], [{"role": "assistant", "content": "no idea"}]]
    got = funcs[0](
        prompts=[task.messages(ex)] * 2,
        completions=completions,
        example=[encode_example(ex), encode_example(ex)],
        trainer_state=None,
    )
    assert got == [1.0, 0.0]
    assert isinstance(funcs[0], TRLRewardFunction)
    assert funcs[0](prompts=["hi"], completions=["12"], example=[""]) == [None]  # no task example


def test_build_reward_functions(tiny: Registry) -> None:
    task = get_task("digits")
    fns = build_reward_functions(task, "tiny-rm", tiny, gold_weight=0.0, rm_weight=1.0)
    assert [(f.name, f.weight) for f in fns] == [("gold", 0.0), ("rm", 1.0)]
    with pytest.raises(ValueError, match="no reward to optimise"):
        build_reward_functions(task, None, tiny, gold_weight=0.0, rm_weight=1.0)
    with pytest.raises(ValueError, match="no task and no reward model"):
        build_reward_functions(None, None, tiny, gold_weight=1.0, rm_weight=1.0)
    with pytest.raises(RegistryError, match="a reward model is a full checkpoint of kind 'rm'"):
        build_reward_functions(task, "tiny", tiny, gold_weight=1.0, rm_weight=1.0)


def test_reward_model_scores_batched_like_one_at_a_time(tiny: Registry) -> None:
    from training.reward import transformers_rewards

    msgs = [{"role": "user", "content": "Say 7."}]
    replies = ["7", "seven, of course", "", "77 77 77 77 77"]
    rm = RewardModelReward(tiny.path_of("tiny-rm"), batch_size=3)
    batched = rm([msgs] * len(replies), replies, [None] * len(replies))
    assert batched == pytest.approx(transformers_rewards(tiny.path_of("tiny-rm"), msgs, replies), abs=1e-5)
    assert len(set(batched)) == len(replies)  # the scores do depend on the reply


# --------------------------------------------------------------------------- prompts


def test_prompt_rows_from_the_task_or_a_file(tiny: Registry, tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    task = get_task("digits")
    rows = prompt_rows(_cfg(task="digits", n_prompts=3, max_length=64, max_completion_length=16), tokenizer)
    assert [decode_example(r["example"]) for r in rows] == task.examples("train", 3)
    assert rows[0]["prompt"] == task.messages(task.examples("train", 1)[0])

    train, heldout = task.examples("train", 2), task.examples("heldout", 1)
    path = tmp_path / "prompts.jsonl"
    write_jsonl(
        path,
        [
            {"prompt": train[1].prompt, "id": train[1].id},
            {"prompt": [{"role": "user", "content": "Say 1."}], "id": train[0].id},
        ],
    )
    rows = prompt_rows(_cfg(data=str(path), task="digits"), tokenizer)
    assert [decode_example(r["example"]) for r in rows] == [train[1], train[0]]

    write_jsonl(path, [{"prompt": "Say 2.", "id": heldout[0].id}])
    with pytest.raises(DataError, match="held-out digits example"):
        prompt_rows(_cfg(data=str(path), task="digits"), tokenizer)
    write_jsonl(path, [{"prompt": "Say 2."}])
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: id None names no digits train example"):
        prompt_rows(_cfg(data=str(path), task="digits"), tokenizer)
    rm_only = _cfg(data=str(path), reward="rm", reward_model="tiny-rm")
    assert prompt_rows(rm_only, tokenizer) == [
        {"prompt": [{"role": "user", "content": "Say 2."}], "example": ""}
    ]
    write_jsonl(path, [{"prompt": [{"role": "assistant", "content": "hi"}]}])
    with pytest.raises(DataError, match="the prompt must end with a 'user' message"):
        prompt_rows(rm_only, tokenizer)
    write_jsonl(path, [{"prompt": "x" * 100}])
    short = _cfg(data=str(path), reward="rm", reward_model="r", max_length=64, max_completion_length=16)
    with pytest.raises(DataError, match=r"prompt 1 is 1\d\d tokens; .* leaves 48"):
        prompt_rows(short, tokenizer)


# --------------------------------------------------------------------------- real runs


def _reward_curve(run_dir: Path, steps: int, key: str = "rewards/gold/mean") -> list[float]:
    state = json.loads((run_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    curve = [h[key] for h in state["log_history"] if key in h]
    assert len(curve) == steps, curve
    return curve


def _servable_lora(registry: Registry, name: str, kind: str) -> Any:
    """The entry is one LoRA adapter over `tiny` that vLLM can load, and it changes the model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    entry = registry.load(name, deep=True)
    m = entry.manifest
    assert (m.kind, m.format, m.base_model, m.parent) == (kind, "lora", "tiny", "tiny")
    cfg = check_servable_adapter(entry.path)  # what save_entry enforced: rank, no modules_to_save
    assert cfg["r"] == 16 and cfg["r"] in VLLM_LORA_RANKS and not cfg.get("modules_to_save")
    # every linear layer but the head (peft lists full paths when a model has under 20 of them)
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert sorted(p.name for p in entry.path.iterdir() if p.name.startswith("adapter")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    base = AutoModelForCausalLM.from_pretrained(registry.path_of("tiny"), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, entry.path).eval()(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)
    return m


# RLOO subtracts beta x (the sequence's summed KL) from the raw reward, and the digit fraction
# spreads only ~0.05 within a group, so the tiny model's fast-growing KL would drown it: RLOO's
# gold reward is weighted x10. GRPO divides by the group's std instead and needs no such scale.
ALGORITHMS = {"grpo": (GRPOConfig, run_grpo, 1.0), "rloo": (RLOOConfig, run_rloo, 10.0)}


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_reward_rises_and_the_entry_is_a_servable_lora(kind: str, tiny: Registry, tmp_path: Path) -> None:
    """The learner against a control run at learning rate 1e-9 in the same test (the same
    sampling noise without learning): the verdict is their margin over the last 3 steps, not
    a fixed rise measured on another machine (tiny-model curves differ across CPU
    instruction sets; a fixed threshold failed CI once for PPO)."""
    cls, run, gold_weight = ALGORITHMS[kind]
    steps = 12

    def curve(name: str, learning_rate: float) -> list[float]:
        run_dir = tmp_path / name
        run(
            cls(
                name=name,
                base="tiny",
                registry=str(tiny.root),
                output_dir=str(run_dir),
                max_steps=steps,
                save_steps=steps,
                gold_weight=gold_weight,
                **{**TINY_RUN, "learning_rate": learning_rate},
            )
        )
        return _reward_curve(run_dir, steps)

    learner = curve(f"t-{kind}", TINY_RUN["learning_rate"])
    control = curve(f"t-{kind}-control", 1e-9)
    print(f"learner {[round(c, 3) for c in learner]}\ncontrol {[round(c, 3) for c in control]}")
    margin = sum(learner[-3:]) / 3 - sum(control[-3:]) / 3
    # Measured on a 2-core AVX2 box (mean of the last 3 steps): GRPO learner 0.205 vs control
    # 0.073, RLOO 0.191 vs 0.073; margins of 0.13 and 0.12 against the 0.05 asked for.
    assert margin >= 0.05, f"no margin over the no-learning control: learner {learner}, control {control}"

    m = _servable_lora(tiny, f"t-{kind}", kind)
    assert m.metrics["step"] == steps and "kl" in m.metrics and "rewards/gold/mean" in m.metrics
    assert m.extra["generation"] == "transformers generate"
    assert m.extra["rewards"] == [{"name": "gold", "weight": gold_weight}]
    assert m.extra["first_step"]["step"] == 1
    assert m.hyperparameters["beta"] == 0.04 and m.hyperparameters["task"] == "digits"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread")
def test_rm_reward_logs_gold_beside_it_and_resumes_via_cli(
    tiny: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [
        "--name",
        "t-grpo-rm",
        "--base",
        "tiny",
        "--registry",
        str(tiny.root),
        "--output-dir",
        str(tmp_path / "run"),
        "--reward",
        "rm",
        "--reward-model",
        "tiny-rm",
        "--save-steps",
        "1",
        *[f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()],
    ]
    assert bonserve(["train", "grpo", *flags, "--max-steps", "2"]) == 0, capsys.readouterr().err
    assert "wrote registry entry 't-grpo-rm'" in capsys.readouterr().out
    m = tiny.load("t-grpo-rm").manifest
    # proxy and gold side by side; gold has weight 0, so the training reward is the RM's alone
    assert m.extra["rewards"] == [{"name": "gold", "weight": 0.0}, {"name": "rm", "weight": 1.0}]
    assert m.metrics["reward"] == pytest.approx(m.metrics["rewards/rm/mean"], abs=1e-5)
    assert 0.0 < m.metrics["rewards/gold/mean"] <= 1.0  # so the line above shows it was not added
    assert _reward_curve(tmp_path / "run", 2, "rewards/gold/mean")  # logged every step, not just at the end

    assert bonserve(["train", "grpo", *flags, "--max-steps", "3"]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    assert bonserve(["train", "grpo", *flags, "--max-steps", "3", "--resume"]) == 0, capsys.readouterr().err
    m = tiny.load("t-grpo-rm").manifest
    assert m.metrics["step"] == 3 and m.hyperparameters["resume"] is True
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread")
def test_wall_clock_budget_stops_after_the_step_that_spends_it(tiny: Registry, tmp_path: Path) -> None:
    """--max-time-s: the first step already spends a 1 ms budget, so training stops there with
    the checkpoint and the entry written as if --max-steps had been 1."""
    run_grpo(
        GRPOConfig(
            name="t-budget",
            base="tiny",
            registry=str(tiny.root),
            output_dir=str(tmp_path / "run"),
            max_steps=50,
            max_time_s=0.001,
            save_steps=50,
            **TINY_RUN,
        )
    )
    assert (tmp_path / "run" / "checkpoint-1").is_dir()
    m = tiny.load("t-budget").manifest
    assert m.metrics["step"] == 1 and m.hyperparameters["max_time_s"] == 0.001

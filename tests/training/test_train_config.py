"""Fast checks of the trainer / prefs / eval configs, their CLI, pair rules and the registry
commands. No model is loaded here; adapter directories below are fakes (hand-written
adapter_config.json files), named as such."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from bonserve.cli import main as bonserve
from bonserve.cli import make_parser
from core.flags import ConfigError, config_from_args
from core.lora import check_servable_adapter
from core.registry import Manifest, Registry, RegistryError
from training.common import final_metrics, prepare_run_dir
from training.data import load_preference_data, write_jsonl
from training.dpo_config import DPOConfig
from training.eval import bon_analytic_kl, format_table
from training.eval_config import EvalConfig
from training.prefs import agreement, best_vs_worst, make_pairs
from training.prefs_config import PrefsConfig
from training.prompts import Prompt
from training.rm_config import RMConfig
from training.sft_config import SFTConfig
from training.train_config import TrainConfig


def _cfg(cls=DPOConfig, **kw):
    return cls(**{"data": "d.jsonl", "name": "x", **kw})


# --- config validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (SFTConfig, "lora_r", 12),
        (SFTConfig, "lora_r", 0),
        (SFTConfig, "lora_r", 24),
        (DPOConfig, "lora_dropout", 1.5),
        (DPOConfig, "max_steps", 0),
        (DPOConfig, "batch_size", -2),
        (DPOConfig, "learning_rate", -0.1),
        (DPOConfig, "beta", 0.0),
        (DPOConfig, "loss_type", "nope"),
        (DPOConfig, "label_smoothing", 0.7),
        (DPOConfig, "rpo_alpha", -1.0),
        (RMConfig, "center_rewards_coefficient", -1.0),
        (RMConfig, "name", "../escape"),
        (RMConfig, "base", "bad name"),
    ],
)
def test_bad_trainer_values_are_refused_quoting_the_value(cls, field: str, value) -> None:
    expected = re.escape(f"{field}={value!r}") if field not in ("name", "base") else "invalid"
    with pytest.raises(ConfigError, match=expected):
        _cfg(cls, **{field: value})


def test_defaults_are_cpu_sane_and_resolved() -> None:
    cfg = _cfg(DPOConfig)
    kw = cfg.trainer_kwargs()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.beta, cfg.batch_size, cfg.max_steps) == (16, 32, 0.1, 8, 60)
    assert cfg.learning_rate == 2e-4 and cfg.format == "lora"
    assert kw["bf16"] is False and kw["fp16"] is False and kw["report_to"] == "none"
    full = _cfg(SFTConfig, full=True)
    assert full.learning_rate == 1e-5 and full.format == "full"


def test_trl_configs_accept_our_kwargs(tmp_path: Path) -> None:
    """Every TrainingArguments key we pass exists in TRL 1.16 (a typo would only show in a run)."""
    import trl

    cfg = _cfg(DPOConfig, output_dir=str(tmp_path))
    args = trl.DPOConfig(**cfg.trainer_kwargs(), **cfg.dpo_kwargs())
    assert args.bf16 is False and args.max_steps == 60 and args.beta == 0.1
    assert args.loss_type == ["sigmoid"]
    rpo = _cfg(DPOConfig, output_dir=str(tmp_path), rpo_alpha=0.5, loss_type="ipo")
    args = trl.DPOConfig(**rpo.trainer_kwargs(), **rpo.dpo_kwargs())
    assert args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    trl.RewardConfig(**cfg.trainer_kwargs())
    trl.SFTConfig(**cfg.trainer_kwargs())


def test_prefs_and_eval_configs_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="k=1"):
        PrefsConfig(policy="p", out="o", k=1)
    with pytest.raises(ConfigError, match="judge='human'"):
        PrefsConfig(policy="p", out="o", judge="human")
    with pytest.raises(ConfigError, match="needs --reward-model"):
        PrefsConfig(policy="p", out="o", judge="rm")
    with pytest.raises(ConfigError, match="no gold verifier"):
        PrefsConfig(policy="p", out="o", prompts="prompts.jsonl")
    with pytest.raises(ConfigError, match="unknown task 'chess'"):
        PrefsConfig(policy="p", out="o", task="chess")
    with pytest.raises(ConfigError, match="temperature=0"):
        PrefsConfig(policy="p", out="o", temperature=0)
    assert PrefsConfig(policy="p", out="o").task == "arithmetic"
    with pytest.raises(ConfigError, match="limit=301"):
        EvalConfig(model="m", limit=301)
    with pytest.raises(ConfigError, match="n=0"):
        EvalConfig(model="m", n=0)
    with pytest.raises(ConfigError, match="pairs_from='p' needs --reward-model"):
        EvalConfig(model="m", pairs_from="p")


# --- CLI: flags from the dataclass, YAML recipes ---------------------------------------------


def test_cli_flags_and_yaml_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text("data: pairs.jsonl\nname: from-yaml\nbeta: 0.3\nmax-steps: 7\n")
    parser = make_parser()
    args = parser.parse_args(["train", "dpo", "--config", str(recipe), "--beta", "0.2", "--full"])
    cfg = config_from_args(DPOConfig, args)
    assert (cfg.name, cfg.beta, cfg.max_steps, cfg.full) == ("from-yaml", 0.2, 7, True)

    recipe.write_text("data: pairs.jsonl\nname: x\nbeta_typo: 1\n")
    with pytest.raises(ConfigError, match=r"unknown options \['beta_typo'\]"):
        config_from_args(DPOConfig, parser.parse_args(["train", "dpo", "--config", str(recipe)]))
    with pytest.raises(ConfigError, match=r"missing required option.*--name"):
        config_from_args(DPOConfig, parser.parse_args(["train", "dpo", "--data", "x.jsonl"]))
    args = parser.parse_args(["data", "prefs", "--policy", "p", "--out", "o.jsonl", "-k", "4"])
    assert config_from_args(PrefsConfig, args).k == 4


def test_cli_reports_bad_values_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert bonserve(["train", "rm", "--data", "d.jsonl", "--name", "x", "--lora-r", "12"]) == 1
    assert "lora_r=12" in capsys.readouterr().err
    assert bonserve(["train", "sft", "--data", "/nonexistent.jsonl", "--name", "x"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert bonserve(["eval", "--model", "m", "--n", "0"]) == 1
    assert "n=0" in capsys.readouterr().err


def test_every_config_field_has_help() -> None:
    import dataclasses

    for cls in (SFTConfig, RMConfig, DPOConfig, PrefsConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


# --- run directories -----------------------------------------------------------------------


def test_run_dir_refuses_to_mix_runs(tmp_path: Path) -> None:
    cfg = _cfg(SFTConfig, output_dir=str(tmp_path / "run"))
    run_dir = prepare_run_dir(cfg, "hash-a")
    (run_dir / "checkpoint-2").mkdir()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        prepare_run_dir(cfg, "hash-a")
    with pytest.raises(ConfigError, match="differs from the data"):
        prepare_run_dir(_cfg(SFTConfig, output_dir=str(run_dir), resume=True), "hash-b")
    prepare_run_dir(_cfg(SFTConfig, output_dir=str(run_dir), resume=True), "hash-a")
    prepare_run_dir(_cfg(SFTConfig, output_dir=str(run_dir), overwrite=True), "hash-b")
    assert not (run_dir / "checkpoint-2").exists()
    with pytest.raises(ConfigError, match="no checkpoint"):
        prepare_run_dir(_cfg(SFTConfig, output_dir=str(run_dir), resume=True), "hash-b")


def test_final_metrics_keep_last_values_and_trl_names() -> None:
    history = [
        {"loss": 0.7, "rewards/margins": 0.1, "step": 5, "epoch": 0.1},
        {"loss": 0.4, "rewards/margins": 0.9, "step": 10, "epoch": 0.2},
        {"train_runtime": 12.0, "train_loss": 0.55, "step": 10},
    ]
    assert final_metrics(history) == {
        "loss": 0.4,
        "rewards/margins": 0.9,
        "step": 10,
        "train_runtime": 12.0,
        "train_loss": 0.55,
    }


# --- vLLM adapter checks (fake adapter directories) ------------------------------------------


def _fake_adapter(path: Path, **cfg) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 16, "modules_to_save": None, **cfg}))
    (path / "adapter_model.safetensors").write_bytes(b"fake")
    return path


def test_vllm_adapter_check(tmp_path: Path) -> None:
    assert check_servable_adapter(_fake_adapter(tmp_path / "ok"))["r"] == 16
    with pytest.raises(RegistryError, match="modules_to_save"):
        check_servable_adapter(_fake_adapter(tmp_path / "mts", modules_to_save=["score"]))
    with pytest.raises(RegistryError, match="rank 12"):
        check_servable_adapter(_fake_adapter(tmp_path / "rank", r=12))
    with pytest.raises(RegistryError, match="missing"):
        check_servable_adapter(tmp_path)


# --- pair rule ---------------------------------------------------------------------------


def test_best_vs_worst_rule() -> None:
    assert best_vs_worst([0.0, 1.0, 0.0, 1.0]) == (1, 0)  # first of equal best / worst
    assert best_vs_worst([0.5, 0.5]) is None  # a tie
    assert best_vs_worst([0.2, 0.9, -1.0]) == (1, 2)
    assert best_vs_worst([]) is None


def test_make_pairs_writes_trl_rows_that_load(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    prompts = [Prompt("a", msgs), Prompt("b", msgs), Prompt("c", msgs)]
    samples = [["3", "4", "  "], ["5", "6", "7"], ["1 + 2 = 3", "12", "3"]]
    gold = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    rm = [[2.0, 1.0, 9.0], [0.0, 1.0, 2.0], [-1.0, 0.5, 0.2]]
    rows, stats = make_pairs(prompts, samples, gold, "base", other=rm)
    assert stats == {
        "prompts": 3,
        "pairs": 2,
        "pair_rule": "best-worst",
        "prompts_with_pairs": 2,
        "ties_dropped": 1,
        "empty_completions": 1,
        "judge_agreement": {"pairs": 2, "ties": 0, "agreement": 0.5},
    }
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "3"}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "4"}]  # the empty one is no candidate
    write_jsonl(tmp_path / "p.jsonl", rows)
    loaded, fmt = load_preference_data(tmp_path / "p.jsonl")
    assert str(fmt) == "conversational" and len(loaded) == 2
    assert agreement([(1.0, 1.0)]) == {"pairs": 1, "ties": 1, "agreement": None}


# --- eval helpers ----------------------------------------------------------------------------


def test_bon_analytic_kl() -> None:
    assert bon_analytic_kl(1) == 0.0
    assert bon_analytic_kl(8) == pytest.approx(math.log(8) - 7 / 8)
    assert bon_analytic_kl(8) == pytest.approx(1.2044, abs=1e-4)


def test_format_table_reads_results() -> None:
    result = {
        "model": "m",
        "task": "arithmetic",
        "split": "heldout",
        "prompts": 4,
        "greedy": {"accuracy": 0.25, "mean_reward": 0.25},
        "sampling": {
            "n": 4,
            "temperature": 0.8,
            "per_sample_accuracy": 0.1,
            "pass_at_n": 0.5,
            "selectors": {
                "majority": {"accuracy": 0.25, "accuracy_ci95": 0.4, "gap_captured": 0.375},
                "reward": {"accuracy": 0.5, "accuracy_ci95": 0.5, "gap_captured": None},
            },
        },
        "reward_model": {
            "reward_model": "rm",
            "pairs_from": "m",
            "bon_4_accuracy": 0.5,
            "bon_minus_greedy": 0.25,
            "bon_minus_greedy_ci95": 0.3,
            "bon_analytic_kl": bon_analytic_kl(4),
            "pairwise_accuracy": None,
            "pairs": 0,
        },
        "kl_to_base": {"base": "b", "estimate": 1.5, "on": "greedy completions"},
    }
    table = format_table(result)
    for text in (
        "greedy accuracy",
        "pass@4 (oracle)",
        "BoN-4 by reward (rm)",
        "BoN-4 by majority",
        "gap captured 0.38",
        "+0.250",
        "0.636",
        "n/a",
        "KL to b",
    ):
        assert text in table


# --- registry commands -----------------------------------------------------------------------


def test_registry_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(tmp_path)
    with reg.write(Manifest(name="pol", kind="dpo", format="lora", base_model="b", parent="b")) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"w")
    (tmp_path / "broken").mkdir()
    assert bonserve(["registry", "list", "--registry", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "FORMAT", "PARENT", "CREATED"]
    assert out.splitlines()[1].split()[:4] == ["pol", "dpo", "lora", "b"]
    assert "invalid: broken" in out
    assert bonserve(["registry", "show", "pol", "--verify", "--registry", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "dpo" and "adapter_model.safetensors" in shown["files"]
    assert bonserve(["registry", "show", "nope", "--registry", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_train_config_is_the_shared_base() -> None:
    assert issubclass(SFTConfig, TrainConfig) and issubclass(RMConfig, TrainConfig)
    assert issubclass(DPOConfig, TrainConfig)

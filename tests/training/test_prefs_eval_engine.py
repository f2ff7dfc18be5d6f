"""`data prefs` and `eval` with the real vLLM engine on CPU and the real converted model.

The LoRA policy here is made without training (an adapter with small random weights, a fake
*policy* in the sense that it learned nothing, but a real peft adapter that vLLM loads through
LoRARequest); the reward model is `init_reward_model` (real checkpoint, untrained head).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bonserve.cli import main as bonserve
from core.registry import DEFAULT_MODEL_NAME, Manifest, Registry
from training.data import load_preference_data
from training.reward import init_reward_model
from training.tasks import get_task

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]


def make_random_lora(registry: Registry, name: str) -> Path:
    """A vLLM-loadable adapter (r=8, all linear layers) with small random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = registry.load(DEFAULT_MODEL_NAME).path
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.05)
    manifest = Manifest(
        name=name,
        kind="sft",
        format="lora",
        base_model=DEFAULT_MODEL_NAME,
        parent=DEFAULT_MODEL_NAME,
        extra={"note": "random adapter for tests"},
    )
    with registry.write(manifest) as staging:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    return registry.path_of(name)


def test_prefs_gold_judge_writes_loadable_pairs(
    tmp_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_reward_model(tmp_registry, DEFAULT_MODEL_NAME, "rm-init")
    out = tmp_path / "prefs.jsonl"
    # constraints: fractional gold rewards, so 6 prompts x 4 samples surely give pairs
    rc = bonserve(
        [
            "data",
            "prefs",
            "--policy",
            DEFAULT_MODEL_NAME,
            "--task",
            "constraints",
            "--n-prompts",
            "6",
            "-k",
            "4",
            "--max-tokens",
            "40",
            "--enforce-eager",
            "--registry",
            str(tmp_registry.root),
            "--reward-model",
            "rm-init",
            "--rm-backend",
            "transformers",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "pairs kept" in captured.out and "ties dropped" in captured.out
    stats = json.loads((tmp_path / "prefs.jsonl.stats.json").read_text())
    assert stats["prompts"] == 6 and stats["samples"] == 24
    assert stats["pairs"] + stats["ties_dropped"] == 6 and stats["pairs"] >= 1
    assert stats["judge_agreement"]["pairs"] == stats["pairs"]
    samples = [json.loads(line) for line in (tmp_path / "prefs.jsonl.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(
        len(s["samples"]) == len(s["gold"]) == len(s["rm"]) == 4 for s in samples
    )

    rows, fmt = load_preference_data(out)
    assert str(fmt) == "conversational" and len(rows) == stats["pairs"]
    task = get_task("constraints")
    examples = {ex.id: ex for ex in task.examples("train", 6)}
    for row in rows:  # the gold verifier, re-run here, agrees with the recorded choice
        ex = examples[row["id"]]
        assert row["prompt"] == task.messages(ex)
        chosen, rejected = (task.reward(ex, row[k][0]["content"]) for k in ("chosen", "rejected"))
        assert chosen == row["chosen_score"] > rejected == row["rejected_score"]


def test_eval_lora_policy_with_bon_and_reward_model(
    tmp_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_random_lora(tmp_registry, "lora-policy")
    init_reward_model(tmp_registry, DEFAULT_MODEL_NAME, "rm-init")
    out = tmp_path / "eval.json"
    rc = bonserve(
        [
            "eval",
            "--model",
            "lora-policy",
            "--task",
            "arithmetic",
            "--limit",
            "4",
            "--n",
            "4",
            "--reward-model",
            "rm-init",
            "--enforce-eager",
            "--max-tokens",
            "24",
            "--registry",
            str(tmp_registry.root),
            "--out",
            str(out),
            "--record",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "greedy accuracy" in captured.out and "BoN-4 by reward (rm-init)" in captured.out
    result = json.loads(out.read_text())
    assert result["prompts"] == 4
    s = result["sampling"]
    assert 0 <= s["per_sample_accuracy"] <= s["pass_at_n"] <= 1
    r = result["reward_model"]
    assert 0 <= r["bon_4_accuracy"] <= s["pass_at_n"]  # a reranker cannot beat the oracle
    assert r["bon_analytic_kl"] == pytest.approx(math.log(4) - 3 / 4)
    assert r["pairs_from"] == "lora-policy" and r["pairs"] <= 4 * 4  # (correct, wrong) combinations
    # Every number again from the per-prompt file, computed here and not by the eval's helpers.
    rows = [json.loads(line) for line in out.with_name("eval.prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(row["gold"]) == len(row["rewards"]) == 4 for row in rows)
    per_sample = sum(g == 1.0 for row in rows for g in row["gold"]) / 16
    oracle = sum(max(row["gold"]) == 1.0 for row in rows) / 4
    assert s["per_sample_accuracy"] == pytest.approx(per_sample) and s["pass_at_n"] == pytest.approx(oracle)
    best = [max(range(4), key=lambda j, row=row: (row["rewards"][j], -j)) for row in rows]
    assert [row["picks"]["reward"] for row in rows] == best
    bon = sum(row["gold"][j] == 1.0 for row, j in zip(rows, best, strict=True)) / 4
    assert r["bon_4_accuracy"] == pytest.approx(bon)
    gap = s["selectors"]["reward"]["gap_captured"]
    assert (
        gap is None
        if oracle == per_sample
        else gap == pytest.approx((bon - per_sample) / (oracle - per_sample))
    )
    wins = []
    for row in rows:
        seen: dict[str, int] = {}
        for j, text in enumerate(row["samples"]):
            if text.strip():
                seen.setdefault(text, j)
        good = [j for j in seen.values() if row["gold"][j] == 1.0]
        bad = [j for j in seen.values() if row["gold"][j] != 1.0]
        wins += [row["rewards"][c] > row["rewards"][w] for c in good for w in bad]
    assert r["pairs"] == len(wins)
    assert r["pairwise_accuracy"] == (pytest.approx(sum(wins) / len(wins)) if wins else None)
    assert set(s["selectors"]) == {"logprob", "majority", "reward", "reward+majority"}
    recorded = json.loads((tmp_registry.root / "_state" / "rerank.json").read_text())
    assert recorded["evaluations"]["rm-init"]["lora-policy"]["bon_accuracy"] == pytest.approx(bon)
    kl = result["kl_to_base"]
    assert kl["base"] == DEFAULT_MODEL_NAME and math.isfinite(kl["estimate"]) and kl["estimate"] != 0.0


def test_sigterm_stops_eval_with_its_engine_processes(tmp_registry: Registry, tmp_path: Path) -> None:
    """SIGTERM (what Kubernetes, `timeout` and a job runner send) to `bonserve eval` while its
    engine runs ends the command with 143 and takes vLLM's engine-core process with it, instead
    of leaving that process orphaned and holding its memory."""
    out = tmp_path / "eval.json"
    log = (tmp_path / "eval.log").open("wb")
    cmd = [sys.executable, "-m", "bonserve", "eval", "--model", DEFAULT_MODEL_NAME, "--task", "arithmetic"]
    cmd += ["--enforce-eager", "--registry", str(tmp_registry.root), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        parent = psutil.Process(proc.pid)
        engine: list[psutil.Process] = []
        deadline = time.monotonic() + 300
        while not engine and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            with contextlib.suppress(psutil.NoSuchProcess):  # name(): the 15-char comm
                engine = [c for c in parent.children(recursive=True) if "EngineCor" in c.name()]
        assert engine, (tmp_path / "eval.log").read_text()[-3000:]
        time.sleep(5)  # signalled mid-run: the engine is up or still loading, not yet done
        children = parent.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [(c.pid, c.name()) for c in alive]
        assert not out.exists()
    finally:  # whatever the outcome, nothing of the command's process group outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()

"""training/collective.py in two real gloo processes (torch.multiprocessing), and PPO run
unchanged under torchrun with two CPU processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.registry import Registry
from tests.training.conftest import torchrun_two_cpu_processes
from training.collective import Processes


def _worker(rank: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    procs = Processes(rank=rank, world=2)
    param = torch.nn.Parameter(torch.full((3,), float(rank)))
    procs.broadcast_parameters([param])
    started_in_step = procs.max_divergence([param])
    param.grad = torch.full((3,), float(rank + 1))  # rank 0: 1, rank 1: 2
    no_grad = torch.nn.Parameter(torch.ones(2))  # unused by the loss: counts as zero
    if rank == 1:
        no_grad.grad = torch.full((2,), 4.0)
    procs.average_gradients([param, no_grad])
    with torch.no_grad():
        param.add_(float(rank))  # knock rank 1 out of step
    result = {
        "started_in_step": started_in_step,
        "grad": param.grad.tolist(),
        "no_grad": no_grad.grad.tolist(),
        "mean": procs.mean(torch.tensor([float(rank), 10.0 * rank])).tolist(),
        "gather": procs.gather(torch.tensor([rank, rank])).tolist(),
        "flag": procs.broadcast_flag(rank == 0),
        "shard": procs.shard(list(range(6))),
        "drift": procs.max_divergence([param]),
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_collectives_in_two_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for rank, got in enumerate(ranks):
        assert got["started_in_step"] == 0.0  # rank 1's param became rank 0's zeros
        assert got["grad"] == [1.5, 1.5, 1.5]  # (1 + 2) / 2
        assert got["no_grad"] == [2.0, 2.0]  # (0 + 4) / 2
        assert got["mean"] == [0.5, 5.0]
        assert got["gather"] == [0, 0, 1, 1]
        assert got["flag"] is True  # rank 0's
        assert got["shard"] == [rank, rank + 2, rank + 4]
        assert got["drift"] == 1.0  # rank 1 moved by 1


def test_one_process_is_the_identity() -> None:
    import torch

    procs = Processes()
    t = torch.tensor([1.0, 2.0])
    assert procs.mean(t) is t and procs.gather(t) is t and procs.broadcast_flag(False) is False
    assert procs.shard([1, 2, 3]) == [1, 2, 3] and procs.max_divergence([t]) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ppo_in_two_processes_writes_one_entry(tiny: Registry, tmp_path: Path) -> None:
    """The PPO script unchanged under torchrun (what `accelerate launch` runs; gloo on CPU):
    each process samples half of every batch, the logged episode counts are global, the
    weights are checked equal across the processes at each checkpoint, and rank 0 writes
    one entry."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {i}"}) + "\n" for i in range(8)))
    proc = torchrun_two_cpu_processes(
        "training.scripts.ppo",
        *("--name", "t-ppo-ddp", "--base", "tiny", "--registry", str(tiny.root)),
        *("--data", str(prompts), "--reward", "rm", "--reward-model", "tiny-rm"),
        *("--output-dir", str(tmp_path / "run"), "--rollout-backend", "hf"),
        *("--batch-size", "4", "--mini-batch-size", "4", "--num-ppo-epochs", "1"),
        *("--max-new-tokens", "8", "--max-length", "64", "--max-steps", "2", "--save-steps", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote registry entry 't-ppo-ddp'") == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # one log, from rank 0
    assert [r["episode"] for r in log] == [4, 8]  # the global batch, 2 prompts per process
    assert (tmp_path / "run" / "checkpoint-2" / "ppo_state.json").is_file()
    entry = Registry(tiny.root).load("t-ppo-ddp")
    assert entry.manifest.extra["processes"] == 2 and entry.manifest.kind == "ppo"

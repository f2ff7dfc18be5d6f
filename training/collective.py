"""What a hand-written training loop (PPO) needs from a distributed launch: the rank, the
number of processes, and the few collectives that keep every process's copy of the trainable
weights identical - parameters broadcast from rank 0 at the start, gradients averaged before
each optimizer step (what DDP does with hooks), statistics averaged or gathered across the
processes, and a check that the weights really did stay in step.

One plain process is the degenerate case: every call returns its input. The process group is
the one accelerate sets up under `accelerate launch` / `torchrun` (gloo on CPU with
ACCELERATE_USE_CPU=true), so TRL's trainers and this loop run under the same launchers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Processes:
        from training.common import process_state

        state = process_state()
        return cls(rank=int(state.process_index), world=int(state.num_processes))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[Any]) -> list[Any]:
        """This process's share of `items` (every world-th, from its rank)."""
        return items[self.rank :: self.world]

    def mean(self, tensor: Any) -> Any:
        """The element-wise mean of `tensor` over the processes."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out / self.world

    def gather(self, tensor: Any) -> Any:
        """Every process's `tensor` (same shape everywhere) concatenated along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's `flag` on every process (a decision all must take together)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def broadcast_parameters(self, params: Iterable[Any]) -> None:
        """Overwrite every process's `params` with rank 0's."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def average_gradients(self, params: Iterable[Any]) -> None:
        """Replace each gradient by its mean over the processes: with equal local batches this is
        the gradient of the loss over the global batch, as DDP computes it."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    def max_divergence(self, params: Iterable[Any]) -> float:
        """The largest absolute difference between any process's `params` and rank 0's (0.0 when
        they are in step)."""
        if self.world == 1:
            return 0.0
        import torch
        import torch.distributed as dist

        worst = torch.zeros(())
        with torch.no_grad():
            for p in params:
                reference = p.data.clone()
                dist.broadcast(reference, src=0)
                worst = torch.maximum(worst, (p.data - reference).abs().max().float())
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

"""Group Relative Policy Optimization: TRL's GRPOTrainer (online RL) on a registry start.

The defaults are the reference recipe (71% greedy on held-out additions after
60 steps, ~11 min on 2 cores): LoRA r=16 on every linear layer, 16 prompts x 8 generations per
step, T=0.8, beta 0.04, lr 2e-4. `--batch-size` counts *prompts* per step here; each gets
`--num-generations` completions, and the step's completions are split into
`--gradient-accumulation-steps` micro-batches (default 8, so 16 completions per forward pass).
Everything but the trainer (prompts, rewards, generation, the entry) is training/online_rl.py,
shared with `bonserve train rloo` (training/rloo.py).

Options: training/grpo_config.py; command line: training/scripts/grpo.py.
"""

from __future__ import annotations

from core.registry import Entry
from training.grpo_config import GRPOConfig
from training.online_rl import run_online


def run(config: GRPOConfig) -> Entry | None:
    """Train with GRPO and write the entry; returns it (None on non-main processes)."""
    import trl

    return run_online(config, "grpo", trl.GRPOTrainer, trl.GRPOConfig)

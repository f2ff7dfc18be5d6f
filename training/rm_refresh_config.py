"""RewardRefreshConfig: the options of a learned reward refreshed during online RL, shared by
`bonserve train ppo` (PPOConfig) and `train grpo|rloo` (OnlineRLConfig); training/rm_refresh.py
and training/verifier_refresh.py do the refreshing."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError


@dataclass(kw_only=True)
class RewardRefreshConfig:
    """Mixed into a trainer's config; its __post_init__ calls `check_refresh`."""

    rm_refresh_every: int = field(
        default=0,
        metadata={
            "help": "With --reward rm: every N iterations (PPO) or generation rounds (GRPO, RLOO), "
            "judge the policy's samples with the task's gold labels and fine-tune the reward model on "
            "what was gathered: a score model on every (better, worse) pair, a generative verifier "
            "(kind verifier) on the worked checks of the replies; 0 = the reward model stays frozen. "
            "With --max-time-s, PPO skips a refresh when less time is left than the previous one took."
        },
    )
    rm_refresh_steps: int = field(default=20, metadata={"help": "Reward-model optimizer steps per refresh."})
    rm_refresh_batch_size: int = field(
        default=8, metadata={"help": "Pairs (a verifier: checks) per reward-model step."}
    )
    rm_refresh_learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the reward model's fine-tuning (full weights)."}
    )
    rm_refresh_replay: str | None = field(
        default=None,
        metadata={
            "help": "Preference file the reward model was trained on (conversational pairs; for a "
            "verifier, its rows file): its rows join the pool every refresh mini-batch draws from, so a "
            "refresh adds to what the model knew instead of replacing it."
        },
    )
    rm_refresh_new_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of each refresh mini-batch drawn from the comparisons new at this refresh "
            "(the rest from everything gathered and replayed); 0 = draw from the whole pool alike."
        },
    )

    def check_refresh(self, *, learned_reward: bool, gold_labels: bool) -> None:
        """The refresh options every trainer shares: a refresh needs a learned reward that trains
        and a task whose gold labels judge the samples."""
        if not self.rm_refresh_every:
            if self.rm_refresh_replay is not None:
                raise ConfigError("rm_refresh_replay needs --rm-refresh-every (it feeds the refreshes)")
            return
        if not (learned_reward and gold_labels):
            raise ConfigError(
                "rm_refresh_every needs --reward rm and a --task whose gold labels judge the refresh samples"
            )
        for key in ("rm_refresh_every", "rm_refresh_steps", "rm_refresh_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be >= 1")
        if not self.rm_refresh_learning_rate > 0:
            raise ConfigError(f"rm_refresh_learning_rate={self.rm_refresh_learning_rate!r}: must be > 0")
        if not 0.0 <= self.rm_refresh_new_share <= 1.0:
            raise ConfigError(f"rm_refresh_new_share={self.rm_refresh_new_share!r}: must be in [0, 1]")

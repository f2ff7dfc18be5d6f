"""The arithmetic of RLHF-PPO, as pure tensor functions the tests check by hand.

Shapes: every per-token tensor is [batch, response_len], with `mask` 1 on response tokens and
0 on the padding after a response ends. Names and formulas follow TRL's former PPOTrainer
and "The N Implementation Details of RLHF with PPO" (Huang et al. 2024):

- per-token reward r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t)), plus the sequence score
  on the last response token (Stiennon et al. 2020; Ouyang et al. 2022);
- GAE(gamma, lambda) advantages over the response, whitened over the batch;
- clipped surrogate policy loss and clipped value loss (Schulman et al. 2017);
- the adaptive KL controller of Ziegler et al. 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; `shift_mean=False` keeps the mean (used for
    rewards, whose level carries meaning). Masked entries come back unchanged-scaled, callers
    multiply by the mask."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating
    KL divergence"): k1 = log r (unbiased, high variance, can be negative), k2 = (log r)^2 / 2,
    k3 = (r' - 1) - log r' with r' = pi_ref / pi (unbiased and always >= 0). Here
    log r = log pi - log pi_ref."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}: use k1, k2 or k3")


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, non_score_rewards): the KL penalty on every response token and the score added
    on the last one. Returns both so the KL part can be logged on its own."""
    non_score = -kl_coef * kl_estimate(logprobs, ref_logprobs, kl_estimator) * mask
    rewards = non_score.clone()
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0])
    rewards[rows, last] += scores * (mask.sum(1) > 0)
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation (Schulman et al. 2016).

    Values past the end of a response are zeroed, so the last token bootstraps from 0 (the
    episode ends there); returns = advantages + values are the value targets.
    """
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    last_gae = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> dict[str, torch.Tensor]:
    """Clipped surrogate objective (as a loss to minimise) and its diagnostics:
    `clipfrac` (share of tokens where clipping is active) and `approxkl` = mean (log r)^2 / 2."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return {
        "loss": masked_mean(torch.max(unclipped, clipped), mask),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> dict[str, torch.Tensor]:
    """Clipped value loss: the pessimistic max of the plain and the clipped squared error, so
    one update cannot move a value further than `cliprange_value` from the rollout's."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    plain_err = (values - returns) ** 2
    clipped_err = (clipped - returns) ** 2
    return {
        "loss": 0.5 * masked_mean(torch.max(plain_err, clipped_err), mask),
        "clipfrac": masked_mean((clipped_err > plain_err).float(), mask),
    }


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits), without materialising log(0)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(torch.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def cut_at_stop(tokens: Sequence[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The response up to and including its first stop token (the policy is trained to emit
    it), and whether there was one: a response without it gets the missing-end penalty."""
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return list(tokens[: i + 1]), True
    return list(tokens), False


class AdaptiveKLController:
    """kl_coef <- kl_coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)
    (Ziegler et al. 2019): raise the penalty when the policy drifts past the target KL."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not target > 0 or not horizon > 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got {target}, {horizon})")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """A fixed coefficient ignores the measured KL."""

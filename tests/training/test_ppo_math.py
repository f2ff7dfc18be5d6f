"""PPO's arithmetic against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from training.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    cut_at_stop,
    entropy_from_logits,
    gae,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-6)


def test_masked_mean_and_var_ignore_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert masked_mean(x, MASK).item() == pytest.approx(3.0)  # (1+2+3+4+5)/5
    assert masked_mean(x, MASK, dim=1).tolist() == pytest.approx([2.0, 4.5])
    # deviations -2,-1,0,1,2 -> sum of squares 10; biased 10/5 = 2, unbiased 10/4 = 2.5
    assert masked_var(x, MASK, unbiased=False).item() == pytest.approx(2.0)
    assert masked_var(x, MASK).item() == pytest.approx(2.5)


def test_whiten_gives_zero_mean_unit_variance_or_keeps_the_mean() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = masked_whiten(x, MASK)
    assert masked_mean(w, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, MASK).item() == pytest.approx(1.0, rel=1e-5)
    assert w[0, 0].item() == pytest.approx(-2 / math.sqrt(2.5), rel=1e-5)
    kept = masked_whiten(x, MASK, shift_mean=False)
    assert masked_mean(kept, MASK).item() == pytest.approx(3.0, rel=1e-5)


def test_kl_estimators() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    log_r = [math.log(2.0), math.log(0.5)]
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx(log_r)
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.5 * v * v for v in log_r])
    # k3 = (ref/p - 1) - log(ref/p): 0.5 - 1 + log 2 and 2 - 1 - log 2
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_token_rewards_put_the_score_on_the_last_response_token() -> None:
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, 0.0]])
    rewards, non_score = token_rewards(torch.tensor([1.0, 3.0]), logp, ref, MASK, kl_coef=0.1)
    # KL_t = logp - ref: [0.5, 0, -0.5] and [-1, 0, (pad)]
    close(non_score, [[-0.05, 0.0, 0.05], [0.1, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 1.05], [0.1, 3.0, 0.0]])


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 7.0]])  # 7.0 is padding: ignored
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, MASK, gamma, lam)
    # row 0: deltas d2 = 1 - 0.3 = 0.7, d1 = 0 + 0.9*0.3 - 0.2 = 0.07, d0 = 0.9*0.2 - 0.1 = 0.08
    a2 = 0.7
    a1 = 0.07 + gamma * lam * a2
    a0 = 0.08 + gamma * lam * a1
    # row 1 ends at t=1: d1 = 2 - 1 = 1 (bootstraps from 0), d0 = 0.5 + 0.9*1 - 1 = 0.4
    b1 = 1.0
    b0 = 0.4 + gamma * lam * b1
    close(adv, [[a0, a1, a2], [b0, b1, 0.0]])
    close(ret, [[a0 + 0.1, a1 + 0.2, a2 + 0.3], [b0 + 1.0, b1 + 1.0, 0.0]])


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    close(adv, [[6 - 0.5, 5 - 0.5, 3 - 0.5]])


def test_clipped_policy_loss_by_hand() -> None:
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    out = policy_loss(new, old, adv, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(0.5, 0.8) = 0.8 (clipped);
    # max(-2.2, -2.2) = -2.2
    assert out["loss"].item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert out["clipfrac"].item() == pytest.approx(2 / 3)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1)]
    assert out["approxkl"].item() == pytest.approx(0.5 * sum(v * v for v in logs) / 3)
    assert out["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)


def test_clipped_value_loss_by_hand() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1, 5.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    out = value_loss(new, old, returns, mask, cliprange_value=0.2)
    # token 0: plain (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24 (clip active)
    # token 1: plain (0.1-1)^2 = 0.81, clipped same -> 0.81; token 2 is padding
    assert out["loss"].item() == pytest.approx(0.5 * (3.24 + 0.81) / 2)
    assert out["clipfrac"].item() == pytest.approx(0.5)


def test_logprobs_and_entropy_from_logits() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(expected)


def test_cut_at_stop_keeps_the_stop_token() -> None:
    assert cut_at_stop([5, 6, 2, 9, 2], {2}) == ([5, 6, 2], True)
    assert cut_at_stop([5, 6, 7], {2, 3}) == ([5, 6, 7], False)
    assert cut_at_stop([], {2}) == ([], False)


def test_adaptive_kl_controller_moves_toward_the_target() -> None:
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n_steps=100)  # error clipped to +0.2 -> x(1 + 0.2*100/1000)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    ctl.update(6.6, n_steps=1000)  # error +0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98 * 1.1)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)

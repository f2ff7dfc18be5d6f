"""Selectors and summary statistics of `bonserve eval` (pure functions; no engine)."""

from __future__ import annotations

import math

import pytest

from training.eval import ci95, gap_captured, pick_majority, pick_reward


def test_pick_reward_takes_the_first_of_equal_best() -> None:
    assert pick_reward([0.1, 0.9, 0.9, -2.0]) == 1


def test_majority_counts_parsed_answers_and_breaks_ties() -> None:
    assert pick_majority([47.0, 46.0, 47.0, None]) == 0  # 47 twice
    assert pick_majority([None, None]) is None  # nothing parses: no pick
    assert pick_majority([46.0, 47.0]) == 0  # a tie without scores: the answer seen first
    # A tie broken by the reward model: 47's best sample (index 3) outscores every 46.
    assert pick_majority([46.0, 47.0, 46.0, 47.0], [0.5, 0.1, 0.2, 0.9]) == 3
    # The vote still wins over the reward: one high-reward 48 loses to two 47s.
    assert pick_majority([48.0, 47.0, 47.0], [9.0, 0.0, 0.1]) == 2


def test_gap_captured() -> None:
    assert gap_captured(0.229, 0.083, 0.471) == pytest.approx((0.229 - 0.083) / (0.471 - 0.083))
    assert gap_captured(0.5, 0.5, 0.5) is None  # no gap to capture
    assert gap_captured(0.05, 0.1, 0.6) == pytest.approx(-0.1)  # worse than one sample


def test_ci95_is_the_normal_interval_half_width() -> None:
    values = [1.0, 0.0] * 50
    assert ci95(values) == pytest.approx(1.96 * math.sqrt(0.25 * 100 / 99 / 100))
    assert math.isnan(ci95([1.0]))

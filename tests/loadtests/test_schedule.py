"""Arrival schedules: gamma inter-arrivals with mean 1/rate, seeded, like `vllm bench serve`."""

from __future__ import annotations

import itertools
import statistics

import pytest

from loadtests.schedule import arrival_times, interarrival_times


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_mean_interarrival_is_one_over_rate(burstiness: float) -> None:
    gaps = interarrival_times(20_000, rate=4.0, burstiness=burstiness, seed=1)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # gamma(shape k): coefficient of variation 1/sqrt(k); Poisson (k=1) has CV 1
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(burstiness**-0.5, rel=0.05)


def test_deterministic_for_a_seed() -> None:
    assert arrival_times(50, 2.0, 1.0, seed=7) == arrival_times(50, 2.0, 1.0, seed=7)
    assert arrival_times(50, 2.0, 1.0, seed=7) != arrival_times(50, 2.0, 1.0, seed=8)


def test_arrivals_start_at_zero_and_increase() -> None:
    times = arrival_times(10, 5.0, seed=0)
    assert len(times) == 10 and times[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(times))
    assert arrival_times(3, float("inf")) == [0.0, 0.0, 0.0]
    assert arrival_times(0, 1.0) == []
    with pytest.raises(ValueError):
        interarrival_times(3, rate=0.0)

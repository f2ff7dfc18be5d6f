"""When requests are sent: open-loop arrivals like `vllm bench serve`.

Inter-arrival times are gamma-distributed with shape `burstiness` and mean 1/rate
(scale = 1 / (rate * burstiness)); burstiness 1 is a Poisson process. The first request goes
at time 0. A seeded `random.Random` makes the schedule identical across the cells of a
comparison, so every configuration sees the same arrival process.
"""

from __future__ import annotations

import itertools
import math
import random


def interarrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """n gaps (seconds) between consecutive arrivals; all zero when rate is infinite."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"rate and burstiness must be > 0, got {rate!r}, {burstiness!r}")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    return [rng.gammavariate(burstiness, scale) for _ in range(n)]


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of n requests: 0, then cumulative gaps."""
    gaps = interarrival_times(max(n - 1, 0), rate, burstiness, seed)
    return list(itertools.accumulate(gaps, initial=0.0))[:n]

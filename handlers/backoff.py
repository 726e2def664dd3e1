"""The one backoff formula: a capped exponential ceiling, and a wait drawn under it."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_s(
    attempt: int,
    base_s: float,
    max_s: float,
    *,
    jitter: float = 1.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait after failure number ``attempt`` (1-based).

    The ceiling doubles from ``base_s`` up to ``max_s``; the wait is drawn
    uniformly from its top ``jitter`` share: 1.0 is full jitter (anywhere in
    [0, ceiling]), 0.5 half (in [ceiling / 2, ceiling]), 0 none (the ceiling).
    """
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 62))
    return float(ceiling * (1.0 - jitter + jitter * rand()))

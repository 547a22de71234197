"""Exponential backoff with jitter, reset after a success.

Shared by the writer (a sink outage, a change that keeps failing) and the
coordinator (an attempt that failed and replays from the slot).  The delay is
capped low (5 s by default) on purpose: the pipeline must resume within a few
seconds of a sink or actor coming back, and the cost of a retry is one request.
"""

from __future__ import annotations

import random


class Backoff:
    """``next()`` -> the delay before the next attempt: ``base * 2**n``, at most ``cap``,
    with "full jitter" in its upper half (so a fleet of writers does not retry in step)."""

    def __init__(self, base: float = 0.2, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.failures = 0

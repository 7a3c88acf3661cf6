"""The one retry pacing of the runtime: exponential backoff with full jitter and a cap.

Every loop that retries (the group committer holding a batch through a database outage, the
outbox relay, the state publisher, the receipts' store and resend, reconnect-adjacent sweeps)
takes its delays from here. Written by hand on purpose: these are long-lived consumer loops
that back off between iterations and start over after a success; tenacity's and stamina's
retry decorators wrap one call to be repeated, which is not what these loops do. Full jitter
(a delay drawn uniformly from [0, min(cap, base * 2^n)]) spreads agents that failed together.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with full jitter and a cap; `reset()` after a success."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, *, rng: random.Random | None = None):
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        return float(min(self.cap, self.base * 2 ** min(self.attempts, 32)))

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this one)."""
        delay = self._rng.uniform(self.base / 2, self.ceiling())
        self.attempts += 1
        return delay

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """A success: the next failure starts from the base again."""
        self.attempts = 0


def delay_for(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The jittered delay after `attempts` failures (for records that keep their own count)."""
    b = Backoff(base, cap, rng=rng)
    b.attempts = attempts
    return b.next_delay()

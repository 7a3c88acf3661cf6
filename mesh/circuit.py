"""A circuit breaker: stop hammering a peer that does not answer, probe it now and then."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None  # when the probe in flight went out

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state, one probe at a time; a probe that never
        reported back (its caller was cancelled) gives way to a new one after reset_after_s."""
        state = self.state
        if state == "closed":
            return True
        now = self._clock()
        stuck = self._probe_at is not None and now - self._probe_at >= self.reset_after_s
        if state == "half_open" and (self._probe_at is None or stuck):
            self._probe_at = now
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._probe_at = None

    def failure(self) -> None:
        self.failures += 1
        self._probe_at = None
        if self.failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def reset(self) -> None:
        """Forget past failures (e.g. after a reconnect, the peer may be back)."""
        self.success()

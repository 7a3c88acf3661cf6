"""What an agent does with inbound messages it will not handle: count them, and say so in the
log at a bounded rate.

The transport drops a QoS 0 message past its bound on messages in hand (reason `overload`), the
dispatcher one arriving while the agent stops (`stopping`). Each is counted in
`mesh_messages_dropped_total{agent,reason}`; the log gets one line per reason and interval
naming the topic of the latest drop and how many went since the last line (a flood of 100,000
messages a second must not become as many log lines).
"""

from __future__ import annotations

import logging
import time

from mesh.metrics import Metrics

log = logging.getLogger("mesh.overload")

REASONS = ("overload", "stopping")
LOG_EVERY_S = 10.0


class Drops:
    def __init__(self, agent: str, metrics: Metrics, *, log_every_s: float = LOG_EVERY_S) -> None:
        self.agent = agent
        self._dropped = metrics.dropped
        for reason in REASONS:  # the series exist at 0 from start
            metrics.dropped.labels(agent, reason)
        self._every = log_every_s
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = dict.fromkeys(REASONS, 0)

    def __call__(self, topic: str, reason: str) -> None:
        self._dropped.labels(self.agent, reason).inc()
        self._since[reason] = self._since.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last.get(reason, -self._every) >= self._every:
            log.warning(
                "%s: dropped %d QoS 0 message(s) unhandled (%s), the latest on %s: %s",
                self.agent,
                self._since[reason],
                reason,
                topic[:200],
                "past the bound on QoS 0 work (messages in hand, or per second)"
                if reason == "overload"
                else "the agent is stopping",
            )
            self._last[reason] = now
            self._since[reason] = 0

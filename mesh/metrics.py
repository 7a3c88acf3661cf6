"""Prometheus metrics of one agent, in a registry passed in (never the global one)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Why the broker may refuse an own publish for good (mesh.agent.Agent.refused): too large, or
# a PUBACK failure reason code (MQTT v5: unspecified, implementation specific, not authorized,
# topic name invalid, packet id in use, quota exceeded, payload format invalid).
PUBLISH_FAILURE_REASONS = (
    "too_large", "refused", *(f"refused_{c}" for c in (128, 131, 135, 144, 145, 151, 153))
)  # fmt: skip
STORE_CAUSES = ("outage", "exhausted", "conflict", "error")


def _cached_children(metric: M) -> M:
    """labels() takes a lock and builds a key on every call; the label sets here are few and
    fixed (contract keys, error codes, agents), so each child is looked up once. (setattr: a
    cached bound method stands in for the method, with the same signature.)"""
    setattr(metric, "labels", functools.lru_cache(maxsize=1024)(metric.labels))  # noqa: B010
    return metric


class Metrics:
    """The Prometheus metrics of one agent, in `registry` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._extra: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        c, g = self._counter, self._gauge
        self.received = c(
            "mesh_messages_received_total", "Messages received, by contract key", "key"
        )
        self.published = c(
            "mesh_messages_published_total", "Messages published, by contract key", "key"
        )
        self.dead_letters = c(
            "mesh_dead_letters_total", "Messages sent to the dead-letter topic", "code"
        )
        self.duplicates = c(
            "mesh_duplicates_skipped_total",
            "Redelivered or repeated messages answered from the inbox",
            "key",
        )
        self.handler_seconds = self._histogram(
            "mesh_handler_duration_seconds", "Time from receipt to commit", LATENCY_BUCKETS, "key"
        )
        self.request_timeouts = c(
            "mesh_request_timeouts_total", "Requests without a reply in time", "key"
        )
        self.batch_size = self._histogram(
            "mesh_commit_batch_size", "Messages per group commit", BATCH_BUCKETS
        )
        self.connected = g("mesh_broker_connected", "1 while connected to the broker")
        self.reconnects = Counter(
            "mesh_broker_reconnects_total", "Broker reconnects", [], registry=self.registry
        )
        self.receipts_pending = g(
            "mesh_receipts_pending", "Requests still waiting for their end-to-end receipt"
        )
        self.receipts_oldest_age = g(
            "mesh_receipts_oldest_age_seconds", "Age of the oldest request without a receipt"
        )
        self.outbox_depth = g("mesh_outbox_pending", "Outbox records not yet published")
        self.outbox_oldest_age = g(
            "mesh_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox record"
        )
        self.broker_dropped = g(
            "mesh_broker_dropped_messages",
            "Mosquitto's $SYS/broker/publish/messages/dropped (alert when it grows)",
        )
        self.peer_up = g("mesh_peer_up", "Availability of the agents this one depends on", "agent")
        self._failures()

    def _failures(self) -> None:
        """What went wrong and was retried, refused or pruned."""
        c = self._counter
        self.store_retries = c(
            "mesh_store_retries_total",
            "Commits retried because the database was away, full, read-only or in conflict",
            "cause",
        )
        self.receipts_transient = c(
            "mesh_receipts_transient_total",
            "Receipts answered with a transient error, resent later like a timeout",
            "key",
        )
        self.pruned = c("mesh_pruned_rows_total", "Rows pruned by age and count", "table")
        self.task_failures = c(
            "mesh_task_failures_total",
            "Failed cycles, items or runs of a background task (each retried with backoff)",
            "task",
        )
        self.dropped = c(
            "mesh_messages_dropped_total",
            "Inbound messages dropped unhandled: QoS 0 past the bound on messages in hand"
            " (overload) or arriving while the agent stops (stopping)",
            "agent",
            "reason",
        )
        self.publish_failures = c(
            "mesh_publish_failures_total",
            "Own publishes the broker refused for good (reason code) or that exceed its "
            "maximum packet size, by contract key and reason",
            "key",
            "reason",
        )

    def start_at_zero(
        self,
        *,
        received: Iterable[str] = (),
        published: Iterable[str] = (),
        requests: Iterable[str] = (),
        dead_letter_codes: Iterable[str] = (),
        tables: Iterable[str] = (),
    ) -> None:
        """Make every labelled counter whose label values are known exist at 0, so an alert
        on `increase(...)` sees the first event after a start (a series that appears with 1
        has no increase). `received`: routed contract keys; `published`: keys this agent
        publishes; `requests`: keys it sends requests on."""
        for key in received:
            self.received.labels(key).inc(0)
            self.duplicates.labels(key).inc(0)
        for key in published:
            self.published.labels(key).inc(0)
            for reason in PUBLISH_FAILURE_REASONS:
                self.publish_failures.labels(key, reason).inc(0)
        for key in requests:
            self.request_timeouts.labels(key).inc(0)
            self.receipts_transient.labels(key).inc(0)
        for code in dead_letter_codes:
            self.dead_letters.labels(code).inc(0)
        for table in tables:
            self.pruned.labels(table).inc(0)
        for cause in STORE_CAUSES:
            self.store_retries.labels(cause).inc(0)

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        h = Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)
        return _cached_children(h) if labels else h

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return _cached_children(Counter(name, documentation, labels, registry=self.registry))

    def _gauge(self, name: str, documentation: str, label: str | None = None) -> Gauge:
        if label is None:
            return Gauge(name, documentation, registry=self.registry)
        return _cached_children(Gauge(name, documentation, [label], registry=self.registry))

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        """An agent's own counter in this registry (created on first use)."""
        if name not in self._counters:
            self._counters[name] = self._counter(name, documentation, *labels)
        return self._counters[name]

    def gauge(self, name: str, documentation: str) -> Gauge:
        """An agent's own gauge in this registry (created on first use)."""
        if name not in self._extra:
            self._extra[name] = Gauge(name, documentation, registry=self.registry)
        return self._extra[name]

    def total(self, sample_name: str) -> float:
        """Sum of one sample over all its labels (for health output and tests)."""
        return sum(
            s.value
            for metric in self.registry.collect()
            for s in metric.samples
            if s.name == sample_name
        )

"""Prometheus metrics of one agent, in a registry passed in (never the global one)."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._extra: dict[str, Gauge] = {}
        self.received = Counter(
            "mesh_messages_received_total",
            "Messages received, by contract key",
            ["key"],
            registry=r,
        )
        self.published = Counter(
            "mesh_messages_published_total",
            "Messages published, by contract key",
            ["key"],
            registry=r,
        )
        self.dead_letters = Counter(
            "mesh_dead_letters_total",
            "Messages sent to the dead-letter topic",
            ["code"],
            registry=r,
        )
        self.duplicates = Counter(
            "mesh_duplicates_skipped_total",
            "Redelivered or repeated messages answered from the inbox",
            ["key"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "mesh_handler_duration_seconds",
            "Time from receipt to commit",
            ["key"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.request_timeouts = Counter(
            "mesh_request_timeouts_total", "Requests without a reply in time", ["key"], registry=r
        )
        self.batch_size = Histogram(
            "mesh_commit_batch_size",
            "Messages per group commit",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.connected = Gauge(
            "mesh_broker_connected", "1 while connected to the broker", registry=r
        )
        self.reconnects = Counter("mesh_broker_reconnects_total", "Broker reconnects", registry=r)
        self.receipts_pending = Gauge(
            "mesh_receipts_pending",
            "Requests still waiting for their end-to-end receipt",
            registry=r,
        )
        self.receipts_oldest_age = Gauge(
            "mesh_receipts_oldest_age_seconds",
            "Age of the oldest request without a receipt",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "mesh_outbox_pending", "Outbox records not yet published", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "mesh_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox record",
            registry=r,
        )
        self.broker_dropped = Gauge(
            "mesh_broker_dropped_messages",
            "Mosquitto's $SYS/broker/publish/messages/dropped (alert when it grows)",
            registry=r,
        )
        self.peer_up = Gauge(
            "mesh_peer_up", "Availability of the agents this one depends on", ["agent"], registry=r
        )
        # labels() takes a lock and builds a key on every call; the label sets here are few and
        # fixed (contract keys, error codes, agents), so each child is looked up once.
        for metric in (
            self.received,
            self.published,
            self.dead_letters,
            self.duplicates,
            self.handler_seconds,
            self.request_timeouts,
            self.peer_up,
        ):
            metric.labels = functools.lru_cache(maxsize=1024)(metric.labels)  # type: ignore[method-assign]

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

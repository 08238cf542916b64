"""The bridge's Prometheus metrics (one registry per bridge, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("usync_bridge_received", "Broker messages received", ["site"], registry=r)
        self.redelivered = Counter("usync_bridge_redelivered", "Broker messages flagged as redelivered (possible duplicates)", ["site"], registry=r)
        self.relayed = Counter("usync_bridge_relayed", "Messages written to the events topic and acked", ["site"], registry=r)
        self.dead_lettered = Counter("usync_bridge_dead_lettered", "Messages written to the DLQ topic and acked", ["site"], registry=r)
        self.reconnects = Counter("usync_bridge_reconnects", "Broker reconnect attempts", ["site"], registry=r)
        self.queue_recoveries = Counter("usync_bridge_queue_recoveries", "Subscriptions made again after a queue went missing (re-registered)", ["site"], registry=r)
        self.in_flight = Gauge("usync_bridge_in_flight", "Messages sent to Kafka and not yet confirmed", registry=r)
        self.kafka_up = Gauge("usync_bridge_kafka_up", "1 when the Kafka producer is connected", registry=r)
        self.send_seconds = Histogram(
            "usync_bridge_kafka_send_seconds", "Time from send to Kafka acknowledgement", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def for_site(self, site: str) -> None:
        """Every per-site series at 0 from the start: ``increase()`` in an alert sees the
        first dead letter or reconnect only if the series existed before it."""
        for counter in (self.received, self.redelivered, self.relayed, self.dead_lettered, self.reconnects,
                        self.queue_recoveries):
            counter.labels(site)

"""Prometheus metrics of one worker, in their own registry (served by the faust view /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.events_folded = Counter("usync_events_folded", "Envelopes folded into the table", ["link"], registry=registry)
        self.events_routed = Counter("usync_events_routed", "Envelopes read from the events topic by the router", registry=registry)
        self.events_unrouted = Counter("usync_events_unrouted", "Envelopes no link takes", registry=registry)
        self.corrections = Counter("usync_corrections_requested", "Correction requests sent to the sink", ["link"], registry=registry)
        self.outcomes = Counter("usync_outcomes", "Correction outcomes", ["link", "action"], registry=registry)
        self.http_calls = Counter("usync_http_calls", "Waldur API calls", ["site", "method", "status"], registry=registry)
        self.site_paused = Gauge("usync_site_paused", "1 while a site refuses our credentials (alert on it)", ["site"], registry=registry)
        self.site_up = Gauge("usync_site_up", "0 while a site's calls fail (5xx, 429, timeouts, refused connections) in a row", ["site"], registry=registry)
        self.rejected_rows = Gauge("usync_rejected_rows", "Rows whose correction A refused (4xx), waiting for a change or their retry window (this worker's partitions)", ["link"], registry=registry)
        self.lookups = Counter("usync_lookups", "Identity-index lookups made", ["site", "status"], registry=registry)
        self.reconcile_passes = Counter("usync_reconcile_passes", "Reconcile passes", ["result"], registry=registry)
        self.snapshot_pages = Counter("usync_snapshot_pages", "Snapshot pages written", ["link", "site"], registry=registry)
        self.table_rows = Gauge("usync_table_rows", "Rows in this worker's partitions of the table", registry=registry)
        self.drift = Gauge("usync_drift", "Rows whose A side differs from B (this worker's partitions)", ["link"], registry=registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one worker, in their own registry (served by the faust view /metrics)."""

from __future__ import annotations

from collections.abc import Iterable

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
        self.source_reads_shared = Counter("usync_source_reads_shared", "Live reads of a source site answered by a "
                                           "read another link of that source had just sent", ["site"], registry=registry)
        self.site_up = Gauge("usync_site_up", "0 while a site's calls fail (5xx, 429, timeouts, refused connections) in a row",
                             ["site"], registry=registry)
        self.rejected_rows = Gauge("usync_rejected_rows", "Rows whose correction A refused (4xx), waiting for a change or "
                                   "their retry window (this worker's partitions)", ["link"], registry=registry)
        self.lookups = Counter("usync_lookups", "Identity-index lookups made", ["site", "status"], registry=registry)
        self.reconcile_passes = Counter("usync_reconcile_passes", "Reconcile passes", ["result"], registry=registry)
        self.snapshot_pages = Counter("usync_snapshot_pages", "Snapshot pages written", ["link", "site"], registry=registry)
        self.listing_facts = Counter("usync_listing_facts", "What comparing reconcile listings with the table wrote "
                                     "to the events topic (listed: a difference; unlisted: a user gone)", ["kind"],
                                     registry=registry)
        self.listing_pages = Counter("usync_listing_pages_compared", "Reconcile listing pages the fold compared "
                                     "with the table", ["link"], registry=registry)
        self.checkpoints = Counter("usync_checkpoints", "Table checkpoints written, per partition", ["result"],
                                   registry=registry)
        self.table_rows = Gauge("usync_table_rows", "Rows in this worker's partitions of the table", registry=registry)
        self.dead_lettered = Counter("usync_dead_lettered", "Records the worker wrote to the DLQ (poison records)",
                                     ["topic", "reason_class"], registry=registry)
        self.tables_waiting = Gauge("usync_tables_waiting_for_kafka",
                                    "1 while this worker's table recovery cannot reach Kafka", registry=registry)
        self.budget_share = Gauge("usync_budget_share", "This worker's part (0..1) of a site's API budget now (the "
                                  "demand exchange: split among the workers with work for the site)", ["site"],
                                  registry=registry)
        self.drift = Gauge("usync_drift", "Rows whose A side differs from B (this worker's partitions)", ["link"], registry=registry)

    def known(self, sites: Iterable[str], links: Iterable[str], topics: Iterable[str], actions: Iterable[str]) -> None:
        """The configured sites', links' and topics' series at 0 from the start: an alert on
        ``increase()`` sees the first gave-up or dead letter only if the series existed
        before it, and ``usync_site_paused == 1`` has a series to compare."""
        for site in sites:
            self.site_paused.labels(site).set(0)
            self.source_reads_shared.labels(site)
        for link in links:
            self.events_folded.labels(link)
            self.corrections.labels(link)
            for action in actions:
                self.outcomes.labels(link, action)
        for topic in topics:
            self.dead_lettered.labels(topic, "undecodable")

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""The faust-streaming app: route -> fold -> correct, plus the reconciler timer and web views.

    events topic ──route──▶ <app>-by-link (key = link) ──fold──▶ tables rows/index/pending
         ▲                                                 │ dirty & mismatched
         │ lookups, snapshots, sink reads                  ▼
         └──────────────────────────── sink ◀── <app>-corrections (key = link:user)
                                          └──▶ outcomes topic

The route and sink stages run on aiokafka consumer groups of their own
(streams.router, streams.sink_loop), committing a batch's offsets only after every
record it produced is acknowledged by Kafka (invariant 1). The fold is a faust agent
(its tables are faust's) batching with ``stream.take_events``: faust acks a batch's
events when the loop comes back for the next batch, i.e. after the body below has
handled them and written their state; a batch the body did not finish is held back
from the commit (:func:`held_back_unless_done`) and read again after the rebalance or
restart that interrupted it. A fold that raises stops the worker for that restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import faust
import faust.web
import mode
import msgspec
from faust.types import EventT

from streams import transport
from streams.config import Config
from streams.core import (
    FoldResult, LookupNeeded, Row, TableState, as_dict, compile_routes, drift, fold_by_link, needing_correction,
    row_key,
)
from streams.kafka import by_link_topic as by_link_topic_name
from streams.kafka import RecordSender, client_options, until_kafka_answers
from streams.kafka import corrections_topic as corrections_topic_name
from streams.metrics import Metrics
from streams.reconciler import jittered, reconcile_pass
from streams.recovery import PatientRecovery, PatientTableManager
from streams.router import Router, unpack
from streams.sink import CorrectionRequest, Sink, lookup_envelope, request_encoder
from streams.sink_loop import SinkLoop
from streams.tables import (
    ChangelogWriter, LinkTable, buffered_state, define_tables, link_partition, table_state, take_changes,
    write_changes,
)
from streams.waldur import Clients, GaveUp

log = logging.getLogger("usync.app")

FOLD_BATCH = 64  # by-link records, each an array of up to router.MAX_RECORD_ENVELOPES
RERAISE_INTERVAL = 30.0  # seconds between scans for rows left in drift
RERAISE_SETTLE = 30.0  # a row's newest fact must be this old before it is raised again
PENDING_RETRY_INTERVAL = 10.0  # seconds between re-issues of parked events' lookups
DRIFT_MAX_AGE = 10.0  # seconds a /metrics scrape may reuse the drift gauges


def broker_credentials(config: Config) -> Any:
    """faust's credentials object for TLS/SASL, None for PLAINTEXT."""
    options = client_options(config)
    ssl_context = options.get("ssl_context")
    if options.get("sasl_mechanism"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options.get("sasl_plain_password"),
            mechanism=options["sasl_mechanism"], ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


@dataclass
class Usync:
    """The app and the objects its agents share (one per worker process)."""

    config: Config
    app: faust.App
    metrics: Metrics
    clients: Clients
    tables: tuple[Any, Any, Any]
    router: Router | None = None
    records: RecordSender | None = None
    sink_loop: SinkLoop | None = None
    drift_cache: tuple[float, dict[str, Any]] | None = None
    rng: random.Random = field(default_factory=random.Random)
    next_reconcile: float = 0.0  # monotonic; 0 = at start

    @property
    def state(self):
        return table_state(*self.tables)


def create_app(config: Config, *, store: str = "rocksdb", web_port: int | None = None,
               data_dir: str | None = None, reconcile: bool = True) -> Usync:
    kafka = config.kafka
    app = transport.App(  # faust.App with a short fetch wait (see streams.transport)
        config.app_id,
        broker=[f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(config),
        store="memory://" if store == "memory" else "rocksdb://",
        datadir=data_dir or config.data_dir,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_host=config.web_host,
        web_port=web_port if web_port is not None else config.web_port,
        web_in_thread=False,
        Table=LinkTable,
        # A killed worker's partitions move to the survivors within ~10 s, not faust's 60.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_request_timeout=kafka.request_timeout,
        stream_recovery_delay=kafka.recovery_delay,
        TableManager=PatientTableManager,  # table recovery waits out a Kafka outage
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_acks=-1,
        # Changelog and sink records go out in batches, not one produce request each.
        producer_linger=0.005,
    )
    metrics = Metrics()
    clients = Clients(config, metrics)
    tables = define_tables(app, kafka.partitions)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much; metrics count them
    usync = Usync(config=config, app=app, metrics=metrics, clients=clients, tables=tables)
    routes = compile_routes(config.links)
    links = routes.by_name

    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    by_link_topic = app.topic(by_link_topic_name(config), partitions=kafka.partitions, internal=True, **raw)
    corrections_topic = app.topic(corrections_topic_name(config), partitions=kafka.partitions, internal=True, **raw)

    # The sink's facts and outcomes go out on a producer of their own: faust's send path
    # costs more per record than the sink spends on a whole correction.
    records = RecordSender(client_options(config))
    usync.records = records

    async def emit_event(key: bytes, value: bytes) -> None:
        await records.send(kafka.events_topic, key, value)

    async def emit_outcome(key: bytes, value: bytes) -> None:
        await records.send(kafka.outcomes_topic, key, value)

    sink = Sink(links, clients, metrics, emit_event, emit_outcome)

    # -- 1: route every fact to the links it feeds (aiokafka, batched: see streams.router) --
    router = Router(config, routes, metrics, by_link_topic.get_topic_name())
    usync.router = router

    @app.task
    async def route() -> None:
        await router.run()

    @app.task
    async def record_sender() -> None:
        await records.start()
        try:
            await asyncio.Event().wait()  # until the worker stops
        finally:
            await records.stop()

    # -- 2: fold one link's facts into its partition of the table -----------------------
    # A fold that raises takes the worker down rather than only the agent: faust would
    # restart the agent on its buffered stream, past the batch held back, and could then
    # commit past that batch. A restarted worker reads again from the last commit.
    @app.agent(by_link_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def fold(stream: faust.StreamT) -> None:
        state = buffered_state(*usync.tables)
        writer = ChangelogWriter(client_options(config))
        await writer.start()
        try:
            async for batch in stream.take_events(FOLD_BATCH, within=0.02):
                with held_back_unless_done(batch):
                    await fold_batch(batch, state, writer)
        finally:
            await writer.stop()  # the worker is stopping: let its producer close cleanly

    async def fold_batch(batch: list[EventT], state: TableState, writer: ChangelogWriter) -> None:
        groups: dict[str, list[EventT]] = defaultdict(list)
        for event in batch:
            groups[event.key.decode()].append(event)
        lookups: list[LookupNeeded] = []
        corrections = []
        folded = []  # (an event of the link's partition, its changes), written below
        for link_name, events in groups.items():
            items = [(link_name, envelope) for e in events for envelope in unpack(e.value)]
            with link_partition(events[0]):
                result: FoldResult = fold_by_link(state, routes, items)
                rows = needing_correction(state, routes, result.dirty)
            folded.append((events[0], take_changes(state)))  # each key once per batch
            metrics.events_folded.labels(link_name).inc(len(items))
            lookups.extend(result.lookups)
            corrections.extend(request_correction(row) for row in rows)
        # Requests first, then the state that implies them: a worker killed in
        # between folds the batch again from a table without it, and asks again.
        await asyncio.gather(*corrections)
        changelog = []
        for event, taken in folded:
            with link_partition(event):
                changelog += write_changes(writer, taken, usync.tables, event.message.partition)
        await asyncio.gather(*changelog)
        for need in lookups:
            start_lookup(need)

    async def request_correction(row: Row) -> None:
        """Send "look at (link, user)" to the sink and wait for Kafka's ack, through any
        outage (a request sent twice is harmless: the sink verifies before it PATCHes)."""
        request = CorrectionRequest(
            link=row.link, user_username=row.user_username,
            a_offering_user_uuid=row.a_offering_user_uuid, b_offering_user_uuid=row.b_offering_user_uuid,
            desired=row.b_username, cause_event_id=row.b_event_id or row.a_event_id or "",
            observed_at=max(row.b_observed_at, row.a_observed_at),
        )
        key, value = request.key.encode(), request_encoder.encode(request)
        metrics.corrections.labels(row.link).inc()

        async def send() -> None:
            await (await corrections_topic.send(key=key, value=value))
        await until_kafka_answers(send, f"correction request for {request.key}")

    raised_again: dict[str, int] = {}  # row key -> the newest fact it was raised again for

    @app.timer(RERAISE_INTERVAL)
    async def reraise_drift() -> None:
        """A row still in drift well after its newest fact is raised once more. When a group
        forms, faust can commit correction requests it never handed to the sink; without
        this, such users would wait for the next reconcile."""
        settled_before = int(time.time() * 1_000_000) - int(RERAISE_SETTLE * 1_000_000)
        state = usync.state
        for link in config.links:
            for row in drift(state, link):
                newest = max(row.b_observed_at, row.a_observed_at)
                key = row_key(row.link, row.user_username)
                if newest > settled_before or raised_again.get(key) == newest:
                    continue
                raised_again[key] = newest
                log.info("raising %s again: still in drift %.0f s after its newest fact", key, RERAISE_SETTLE)
                await request_correction(row)

    lookups_in_flight: dict[tuple[str, str], asyncio.Task] = {}

    def start_lookup(need: LookupNeeded) -> None:
        """In the background: a slow site must not stall folding. The parked event stays in the
        pending table until the answer is folded, so a lookup lost with its worker is re-issued."""
        key = (need.site, need.offering_user_uuid)
        if key not in lookups_in_flight:
            task = asyncio.ensure_future(lookup(need))
            lookups_in_flight[key] = task
            task.add_done_callback(lambda _: lookups_in_flight.pop(key, None))

    @app.timer(PENDING_RETRY_INTERVAL)
    async def retry_pending() -> None:
        """Re-issue the lookups of parked events: after a restart, or after a lookup gave up."""
        for parked in list(usync.state.pending.values()):
            start_lookup(LookupNeeded(site=parked.site, offering_uuid=parked.offering_uuid,
                                      offering_user_uuid=parked.offering_user_uuid, link=parked.link,
                                      cause_event_id=parked.event_id))

    async def lookup(need: LookupNeeded) -> None:
        """Identity-index miss: ask the site, write the answer as a fact (404 is an answer too)."""
        asked = datetime.now(timezone.utc)
        try:
            status, record = await clients[need.site].get_offering_user(need.offering_user_uuid)
        except GaveUp as exc:  # the pending entry stays; the next event or snapshot retries it
            log.warning("lookup of %s on %s gave up: %s", need.offering_user_uuid, need.site, exc)
            metrics.lookups.labels(need.site, "gave-up").inc()
            return
        metrics.lookups.labels(need.site, str(status)).inc()
        await emit_event(*lookup_envelope(need.site, need.offering_uuid, need.offering_user_uuid, status, record, asked))

    # -- 3: the sink (aiokafka, offsets of its own: see streams.sink_loop) ----------------
    sink_loop = SinkLoop(config, sink, corrections_topic.get_topic_name())
    usync.sink_loop = sink_loop

    @app.task
    async def correct() -> None:
        await sink_loop.run()

    # -- 4: the reconciler (one worker: the leader) -------------------------------------
    if reconcile:
        @app.timer(1.0, on_leader=True)
        async def reconciler() -> None:
            if time.monotonic() < usync.next_reconcile:
                return
            usync.next_reconcile = time.monotonic() + jittered(config.reconcile_interval, usync.rng)
            try:
                await reconcile_pass(config, clients, metrics, emit_event)
            except Exception as exc:  # the next pass retries; never stop the worker
                log.warning("reconcile pass failed: %s", exc)
                usync.next_reconcile = time.monotonic() + min(60.0, config.reconcile_interval)

    # -- web views ----------------------------------------------------------------------
    @app.page("/usync/table/")
    async def table_view(web: Any, request: Any) -> Any:
        return web.bytes(msgspec.json.encode(as_dict(usync.state)), content_type="application/json")

    @app.page("/usync/drift/")
    async def drift_view(web: Any, request: Any) -> Any:
        return web.json(_drift_report(usync, max_age=0.0))

    @app.page("/usync/reconcile/")
    class ReconcileView(faust.web.View):
        """POST: run one reconcile pass now (ops, tests); answers when every page is written."""

        async def post(self, request: Any) -> Any:
            done = await reconcile_pass(config, clients, metrics, emit_event)
            return self.json({"reconciled": done})

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        _drift_report(usync)  # refresh the gauges
        return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json({
            "status": "ok",
            "router_connected": router.connected,
            "sink_connected": sink_loop.connected,
            "tables": _tables_state(app),
            "paused_sites": [n for n, c in clients.by_site.items() if c.paused_until > time.monotonic()],
        })

    return usync


@contextlib.contextmanager
def held_back_unless_done(batch: list[EventT]) -> Iterator[None]:
    """faust's ``take_events`` acks a batch when its generator closes, even when the body
    never finished it (cancelled by a stop or a rebalance). Marking the messages acked
    here, without telling the consumer, keeps their offsets out of every commit: they
    are read again after the restart or by the partition's next owner."""
    try:
        yield
    except BaseException:
        for event in batch:
            event.message.acked = True
        raise


def _tables_state(app: faust.App) -> str:
    """``ready``, ``recovering`` (restoring from the changelogs after a rebalance) or
    ``waiting-for-kafka`` (that restore cannot reach Kafka and keeps asking)."""
    recovery: PatientRecovery = app.tables.recovery  # type: ignore[assignment]
    if recovery.waiting_for_kafka:
        return "waiting-for-kafka"
    return "recovering" if app.in_recovery else "ready"


def _drift_report(usync: Usync, max_age: float = DRIFT_MAX_AGE) -> dict[str, Any]:
    """Drift per link; a scrape reuses a report younger than ``max_age`` (it walks every row)."""
    cached = usync.drift_cache
    if cached is not None and time.monotonic() - cached[0] < max_age:
        return cached[1]
    state = usync.state
    report: dict[str, Any] = {"rows": len(state.rows), "links": {}}
    usync.metrics.table_rows.set(report["rows"])
    for link in usync.config.links:
        rows = drift(state, link)
        usync.metrics.drift.labels(link.name).set(len(rows))
        report["links"][link.name] = {"drift": len(rows), "users": [r.user_username for r in rows[:100]]}
    usync.drift_cache = (time.monotonic(), report)
    return report

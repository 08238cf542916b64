"""The composition root: builds the faust app and wires the stages to their adapters.

    events topic ──route──▶ <app>-by-link (key = link) ──fold──▶ tables rows/index/pending
         ▲                                                 │ dirty & mismatched
         │ lookups, snapshots, the correct stage's reads   ▼
         └──────────────────────────── correct ◀── <app>-corrections (key = link:user)
                                          └──▶ outcomes topic

Nothing is decided here: every handler is a stage (``streams.stages``) that gets its
dependencies; every faust hook is in ``streams.adapters.faust``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
import mode

from streams.adapters.faust.app import (
    App, broker_credentials, crash_on_error, held_back_unless_done, register_views, tables_state, topic_emitter,
)
from streams.adapters.faust.recovery import PatientTableManager
from streams.adapters.faust.tables import (
    FaustCheckpointSource, FaustFoldTables, LinkTable, Tables, define_tables, link_groups, table_state,
)
from streams.adapters.kafka.budget import BudgetExchange
from streams.adapters.kafka.client import KafkaAccess, client_options
from streams.adapters.kafka.consumer import BatchConsumer, WindowConsumer
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.checkpoints import TopicSink, fold_fence
from streams.adapters.kafka.groups import ROUTE_CLIENT_ID, every_member_reads_listings
from streams.adapters.kafka.topics import budget_topic, by_link_topic, corrections_topic, producer_codec
from streams.adapters.waldur import Clients
from streams.contract.config import Config
from streams.contract.schema import OutcomeAction
from streams.core import RetryWindow, compile_routes
from streams.core.listing import Listings
from streams.metrics import Metrics
from streams.stages import correct_loop, dead_letter, fold, lookups, reraise, route
from streams.stages.checkpoint import CATCH_UP, Checkpointer
from streams.stages.correct import Corrector
from streams.stages.reconcile import Reconcile
from streams.stages.web import Views

log = logging.getLogger("usync.app")


@dataclass
class Usync:
    """The app and the objects its agents share (one per worker process)."""

    config: Config
    app: faust.App
    metrics: Metrics
    clients: Clients
    tables: Tables
    router: BatchConsumer
    sink_loop: WindowConsumer
    records: RecordSender

    @property
    def state(self):
        return table_state(*self.tables)


def faust_app(config: Config, store: str, web_port: int | None, data_dir: str | None) -> faust.App:
    kafka = config.kafka
    return App(  # faust.App with a short fetch wait (see streams.adapters.faust.app)
        config.app_id,
        broker=[f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(config), store="memory://" if store == "memory" else "rocksdb://",
        datadir=data_dir or config.data_dir, topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor, processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest", web_host=config.web_host,
        web_port=web_port if web_port is not None else config.web_port, web_in_thread=False, Table=LinkTable,
        # A killed worker's partitions move to the survivors within ~10 s, not faust's 60.
        broker_session_timeout=10.0, broker_heartbeat_interval=1.0, broker_request_timeout=kafka.request_timeout,
        stream_recovery_delay=kafka.recovery_delay,
        TableManager=PatientTableManager,  # table recovery waits out a Kafka outage
        broker_commit_every=1000, broker_commit_interval=1.0, producer_acks=-1,
        producer_linger=0.005,  # changelog and correction records go out in batches
        producer_compression_type=producer_codec(kafka.compression.internal),
    )


def create_app(config: Config, *, store: str = "rocksdb", web_port: int | None = None,
               data_dir: str | None = None, reconcile: bool = True, access: KafkaAccess | None = None) -> Usync:
    app = faust_app(config, store, web_port, data_dir)
    kafka, options, metrics, routes = config.kafka, client_options(config), Metrics(), compile_routes(config.links)
    access = access or KafkaAccess(options)  # why Kafka refuses us, for /health (streams/worker.py's too)
    clients = Clients(config, metrics)
    tables = define_tables(app, kafka.partitions, kafka.replica_configs)
    state = lambda: table_state(*tables)  # noqa: E731
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", internal=True)
    by_link = app.topic(by_link_topic(config), partitions=kafka.partitions, **raw)
    corrections = app.topic(corrections_topic(config), partitions=kafka.partitions, **raw)
    # The correct stage's facts and outcomes go out on a producer of their own: faust's send
    # path costs more per record than the stage spends on a whole correction.
    records = RecordSender(options, access=access, compression=producer_codec(kafka.compression.events))
    emit_event = records.emitter(kafka.events_topic)
    dead = dead_letter.DeadLetters(records.emitter(kafka.dlq_topic), metrics)
    request = fold.RequestCorrection(topic_emitter(corrections), metrics, routes)
    finder = lookups.Lookups(clients, emit_event, metrics, state)
    folder_tables = FaustFoldTables(tables, options, producer_codec(kafka.compression.internal))
    route_group = f"{config.app_id}-route"
    reraiser, folder, reconciler = _history_stages(config, routes, state, request, folder_tables, finder, metrics,
                                                   dead, records, clients, route_group)
    corrector = Corrector(routes.by_name, clients, metrics, emit_event, records.emitter(kafka.outcomes_topic),
                          enqueue_event=records.enqueuer(kafka.events_topic))
    router = BatchConsumer("router", options, [kafka.events_topic, kafka.listings_topic], route_group,
                           route.Route(routes, metrics, lambda pairs: records.send_all(by_link.get_topic_name(), pairs),
                                       dead).handle,
                           max_records=route.FETCH_RECORDS, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
                           access=access, client_id=ROUTE_CLIENT_ID, records_as_read=True)
    lanes, sink, budget = _correct_stage(config, corrections.get_topic_name(), corrector, dead, clients, metrics,
                                         access)
    app.task(crash_on_error(app, budget.run))
    app.task(crash_on_error(app, router.run))
    app.task(crash_on_error(app, sink.run))
    app.task(crash_on_error(app, _running(records)))

    fold_started = _fold_agent(app, by_link, folder_tables, folder)

    app.timer(config.reraise_interval)(crash_on_error(app, reraiser.scan))
    app.timer(lookups.PENDING_RETRY_INTERVAL)(crash_on_error(app, finder.retry_pending))
    if reconcile:
        app.timer(1.0, on_leader=True)(crash_on_error(app, reconciler.tick))
    checkpointer = Checkpointer(FaustCheckpointSource(app, folder_tables, by_link.get_topic_name(), kafka.partitions),
                                TopicSink(config, records), fold_fence(config, folder.caught_up, CATCH_UP),
                                config.checkpoint_interval, metrics)
    app.timer(min(30.0, config.checkpoint_interval / 4))(crash_on_error(app, checkpointer.tick))

    _known_series(metrics, config, by_link.get_topic_name(), corrections.get_topic_name())
    metrics.tables_waiting.set_function(lambda: tables_state(app) == "waiting-for-kafka")

    health = _health_report(app, dead, access, router, sink, clients, lanes, budget)

    def components() -> dict[str, tuple[str, bool]]:
        tables_now = tables_state(app)
        return {"router": _consumer_state(router), "sink": _consumer_state(sink),
                "tables": (tables_now, tables_now == "ready"),
                "fold": ("started", True) if fold_started.is_set() else ("starting", False)}

    if config.web_token_env is None:
        log.warning("web_token_env is not configured: /usync/table/, /usync/drift/ and POST /usync/reconcile/ "
                    "answer anyone who reaches port %s", app.conf.web_port)
    register_views(app, Views(config.links, state, metrics, reconciler.run_pass, health, components,
                              token=config.web_token(), checkpoint=checkpointer.now))
    return Usync(config=config, app=app, metrics=metrics, clients=clients, tables=tables, router=router,
                 sink_loop=sink, records=records)


def _fold_agent(app: faust.App, by_link: Any, folder_tables: FaustFoldTables, folder: fold.Fold) -> asyncio.Event:
    """The fold agent; the event is set while it runs.

    A fold that raises takes the worker down rather than only the agent: faust would
    restart the agent on its buffered stream, past the batch held back, and could then
    commit past that batch. A restarted worker reads again from the last commit."""
    fold_started = asyncio.Event()

    @app.agent(by_link, supervisor_strategy=mode.CrashingSupervisor)
    async def fold_agent(stream: faust.StreamT) -> None:
        await folder_tables.start()
        fold_started.set()
        try:
            async for batch in stream.take_events(fold.FOLD_BATCH, within=0.02):
                with held_back_unless_done(batch):
                    await folder.fold_batch(link_groups(batch))
        finally:
            fold_started.clear()
            await folder_tables.stop()  # the worker is stopping: let its producer close cleanly

    return fold_started


def _history_stages(config: Config, routes: Any, state: Callable[[], Any], request: fold.RequestCorrection,
                    folder_tables: FaustFoldTables, finder: lookups.Lookups, metrics: Metrics,
                    dead: dead_letter.DeadLetters, records: RecordSender, clients: Clients, route_group: str,
                    ) -> tuple[reraise.Reraiser, fold.Fold, Reconcile]:
    """The stages that write the history: the fold (it compares listings with the table,
    streams.core.listing), the re-raise scan (it finds who a listing lacked) and the reconciler."""
    emit_event, listings = records.emitter(config.kafka.events_topic), Listings()
    reraiser = reraise.Reraiser(config.links, state, request, settle=config.reraise_interval,
                                window=RetryWindow(config.rejection_retry, config.rejection_retry_max),
                                listings=listings, emit_fact=fold.fact_emitter(emit_event, metrics))
    folder = fold.Fold(routes, folder_tables, request, finder, metrics, dead, emit_fact=emit_event,
                       reconciled=reraiser.reconciled, listings_complete=reraiser.listings_complete, listings=listings)
    reconciler = Reconcile(config.links, clients, metrics, emit_event, config.reconcile_interval,
                           emit_listing=records.emitter(config.kafka.listings_topic),
                           differences=every_member_reads_listings(client_options(config), route_group))
    return reraiser, folder, reconciler


def _correct_stage(config: Config, corrections: str, corrector: Corrector, dead: dead_letter.DeadLetters,
                   clients: Clients, metrics: Metrics, access: KafkaAccess) -> tuple[correct_loop.CorrectLoop, WindowConsumer, BudgetExchange]:
    """The lanes (a lane per target site: the bulkheads), their consumer, and the demand
    exchange that gives this worker its part of each site's budget (nothing until it does)."""
    options = client_options(config)
    lanes = correct_loop.CorrectLoop(corrector, dead, busy=clients.want)
    sink = WindowConsumer("sink", options, corrections, f"{config.app_id}-sink", lanes.dispatch,
                          lanes.cancel, window=correct_loop.WINDOW, max_records=correct_loop.BATCH,
                          revoke_wait=correct_loop.REVOKE_WAIT, access=access, shed=lanes.shed,
                          session_timeout_ms=correct_loop.SINK_SESSION_TIMEOUT_MS)
    budget = BudgetExchange(options, budget_topic(config), clients.buckets(), clients.workers_part, metrics,
                            access=access)
    return lanes, sink, budget


def _health_report(app: faust.App, dead: dead_letter.DeadLetters, access: KafkaAccess, router: BatchConsumer,
                   sink: WindowConsumer, clients: Clients, lanes: correct_loop.CorrectLoop,
                   budget: BudgetExchange) -> Callable[[], dict[str, Any]]:
    def health() -> dict[str, Any]:  # degraded: a record was dead-lettered lately, or Kafka refuses us
        degraded = dead.degraded() or access.reason is not None
        return {"status": "degraded" if degraded else "ok", "dead_lettered": dead.count, "kafka": access.report(),
                "router_connected": router.connected, "sink_connected": sink.connected, "tables": tables_state(app),
                "paused_sites": clients.paused(), "sites": clients.health(), "tls_refused": clients.tls_refused(),
                "lanes": lanes.queued(), "budget": budget.report()}
    return health


def _known_series(metrics: Metrics, config: Config, by_link: str, corrections: str) -> None:
    metrics.known(config.sites, [link.name for link in config.links], [config.kafka.events_topic, by_link, corrections],
                  [action.value for action in OutcomeAction])
    metrics.dead_lettered.labels(corrections, dead_letter.HANDLER_ERROR)


def _consumer_state(consumer: BatchConsumer) -> tuple[str, bool]:
    if consumer.joined:
        return "joined", True
    return ("joining" if consumer.connected else "disconnected"), False


def _running(records: RecordSender) -> Any:
    async def record_sender() -> None:
        await records.start()
        try:
            await asyncio.Event().wait()  # until the worker stops
        finally:
            await records.stop()
    return record_sender

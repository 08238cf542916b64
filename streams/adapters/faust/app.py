"""Every faust hook usync relies on, in one place (each guarded by a test in tests/unit/test_library_hooks.py).

- a faust ``App`` whose aiokafka consumer fetches with a short wait (below);
- :func:`held_back_unless_done`: a batch the fold did not finish stays out of every commit;
- :func:`crash_on_error`: a task that raises stops the worker instead of dying silently;
- :func:`topic_emitter`: faust's topic send as the ``Emit`` port, Kafka failures mapped;
- :func:`tables_state`: the table recovery's state for ``/health``.

The short fetch wait, so a catching-up fold never idles:

aiokafka keeps one fetch in flight per broker and leaves out of it every partition whose
records are still buffered. When a fetch goes out while all the fold's busy partitions
are buffered, it holds only idle partitions (the assignor's topic, caught-up ones) and
the broker keeps it for the full ``fetch_max_wait_ms``. The buffers drain long before
that, yet no new fetch may go out until this one returns: the fold sits idle. faust
hard-codes that wait at 1,500 ms, and the fold bench showed it: pauses of ~1.4 s every
~20k events on most runs, the wall rate down from ~55k to 14k-22k events/s. 100 ms
bounds such a pause at a few batches' worth of time and costs an idle worker ten small
requests a second. The route and sink stages' own consumers use the same wait.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT

from streams.adapters.kafka.client import FETCH_MAX_WAIT_MS, client_options, kafka_transient
from streams.contract.config import Config
from streams.errors import KafkaUnavailable

log = logging.getLogger("usync.app")



class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher; faust passes no option
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    """``faust.App`` whose consumer transport is :class:`Transport`."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)


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


def crash_on_error(app: faust.App, task: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A faust task that raises only logs "Task exception was never retrieved" and is gone,
    leaving its stage stopped while the worker looks healthy. A bug must be loud: the
    worker crashes, and its supervisor (systemd, compose) restarts it from the commits."""
    @functools.wraps(task)
    async def run() -> None:
        try:
            await task()
        except Exception as exc:
            log.critical("%s failed: %s: %s; stopping the worker", task.__name__, type(exc).__name__, exc)
            await app.crash(exc)
            raise
    return run


def topic_emitter(topic: Any) -> Callable[[bytes, bytes], Awaitable[None]]:
    """``emit(key, value)`` through faust's producer, returning once Kafka acknowledged it."""
    async def emit(key: bytes, value: bytes) -> None:
        try:
            await (await topic.send(key=key, value=value))
        except Exception as exc:
            if not kafka_transient(exc):
                raise
            raise KafkaUnavailable(f"sending to {topic.get_topic_name()}: {type(exc).__name__}: {exc}") from exc
    return emit


def tables_state(app: faust.App) -> str:
    """``assigning`` (no assignment restored yet since the worker started), ``recovering``
    (restoring from the changelogs after a rebalance), ``waiting-for-kafka`` (that restore
    cannot reach Kafka and keeps asking) or ``ready``.

    "No recovery running" alone said ``ready`` 0.8 s after a restart, while the group had
    not even assigned the worker its partitions (9.6 s later, behind the killed member's
    session timeout; issue 29): faust's recovery sets ``completed`` once the first
    assignment's tables are restored and the streams resumed, empty assignment included."""
    recovery = app.tables.recovery
    if getattr(recovery, "waiting_for_kafka", False):
        return "waiting-for-kafka"
    if app.in_recovery:
        return "recovering"
    return "ready" if recovery.completed.is_set() else "assigning"


def register_views(app: faust.App, views: Any) -> None:
    """The stage's views (``streams.stages.web.Views``) as faust web pages."""
    import faust.web

    def refused(web: Any, request: Any) -> Any:
        """401 unless the request carries the operator token (``Views.authorized``)."""
        if views.authorized(request.headers.get("Authorization")):
            return None
        return web.json({"detail": "a bearer token is required (Authorization: Bearer ...)"}, status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="usync"'})

    @app.page("/usync/table/")
    async def table_view(web: Any, request: Any) -> Any:
        return refused(web, request) or web.bytes(views.table(), content_type="application/json")

    @app.page("/usync/drift/")
    async def drift_view(web: Any, request: Any) -> Any:
        return refused(web, request) or web.json(views.drift())

    @app.page("/usync/reconcile/")
    class ReconcileView(faust.web.View):
        async def post(self, request: Any) -> Any:
            return refused(self, request) or self.json(await views.reconcile_now())

    @app.page("/usync/checkpoint/")
    class CheckpointView(faust.web.View):
        async def post(self, request: Any) -> Any:
            return refused(self, request) or self.json(await views.checkpoint_now())

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(views.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json(views.health())

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"live": True})

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        status, body = views.readiness()
        return web.json(body, status=status)

"""Kafka plumbing shared by every usync process: client options from the config
(TLS/SASL included) and idempotent creation of the topics with their retention."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.config import Config
from streams.retry import Backoff

log = logging.getLogger("usync.kafka")

T = TypeVar("T")


async def until_kafka_answers(attempt: Callable[[], Awaitable[T]], what: str, *,
                              cap: float = Backoff.cap, on_retry: Callable[[], None] | None = None) -> T:
    """``attempt()`` again, with backoff and jitter, until Kafka lets it succeed; never gives up.
    ``what`` names the attempt in the log; ``on_retry`` runs after each failure."""
    backoff = Backoff(cap=cap)
    while True:
        try:
            return await attempt()
        except (KafkaError, asyncio.TimeoutError) as exc:
            delay = backoff.next_delay()
            log.warning("%s failed (%s: %s); again in %.1f s", what, type(exc).__name__, exc, delay)
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)


# The events, DLQ and outcomes topics are the audit log and the replay source:
# nothing is ever deleted by age or size unless the operator says so.
UNLIMITED = {"retention.ms": "-1", "retention.bytes": "-1"}


def client_options(config: Config) -> dict[str, Any]:
    """Connection options for any aiokafka client, secrets resolved from the environment."""
    kafka = config.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(config)
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            options["sasl_plain_password"] = config.secret(kafka.sasl_password_env).reveal()
    return options


async def start_producer(options: dict[str, Any], what: str, **settings: Any) -> AIOKafkaProducer:
    """An idempotent acks=all producer, started however long Kafka takes to answer."""
    backoff = Backoff()
    while True:
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True, **settings)
        try:
            await producer.start()
            return producer
        except Exception as exc:  # Kafka down at start: wait for it like every other loop
            await producer.stop()
            delay = backoff.next_delay()
            log.warning("%s producer: %s; retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)


async def close_quietly(client: Any, what: str) -> None:
    """Stop an aiokafka client whose broker may be gone already: nothing left to close cleanly."""
    try:
        await client.stop()
    except Exception as exc:
        log.debug("%s: closing: %s", what, exc)


class ReplaceableProducer:
    """An idempotent acks=all producer that a failed send replaces with a new one.

    After an outage an idempotent producer can be left answering
    OutOfOrderSequenceNumber to every send; a new producer (new producer id) is always
    safe. However many concurrent sends saw the old one fail, it is replaced once.
    """

    def __init__(self, options: dict[str, Any], what: str, **settings: Any) -> None:
        self._options = options
        self._what = what
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        self._producer = await start_producer(self._options, self._what, **self._settings)
        self._started.set()

    async def stop(self) -> None:
        self._started.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def current(self) -> AIOKafkaProducer:
        """The producer to send on; waits for :meth:`start` (Kafka may still be down)."""
        while self._producer is None:
            await self._started.wait()
        return self._producer

    async def replace(self, failed: AIOKafkaProducer) -> None:
        """Start a new producer in place of ``failed``, unless a concurrent send already did
        (the first caller takes ``failed`` out before it awaits anything: no lock needed)."""
        if self._producer is not failed:
            return
        self._started.clear()
        self._producer = None
        log.warning("%s producer: a send failed; starting a new producer", self._what)
        await close_quietly(failed, f"{self._what} producer")
        await self.start()


class RecordSender(ReplaceableProducer):
    """Sends single records and returns once Kafka acknowledged each: the sink's facts
    and outcomes. Batches up to a megabyte per partition, so that many concurrent
    senders share produce requests instead of waiting for small batches to drain."""

    BATCH_BYTES = 1024 * 1024

    def __init__(self, options: dict[str, Any], linger_ms: int = 5) -> None:
        super().__init__(options, "record", linger_ms=linger_ms, max_batch_size=self.BATCH_BYTES,
                         max_request_size=4 * self.BATCH_BYTES)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Send; return once acknowledged. A failed send raises, and the producer is replaced."""
        producer = await self.current()
        try:
            await (await producer.send(topic, value, key=key))
        except Exception:
            await self.replace(producer)
            raise


class Stage:
    """A worker stage on an aiokafka consumer group of its own (route, sink): runs forever,
    starting over from the committed offsets with the shared backoff, never giving up.
    Subclasses implement :meth:`serve` and set ``connected`` while their consumer is up."""

    name = "stage"
    connected = False

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.serve(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka gone, a send timed out...: start over from the committed offsets
                self.connected = False
                delay = backoff.next_delay()
                log.warning("%s: %s: %s; reconnecting in %.1f s", self.name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def serve(self, backoff: Backoff) -> None:
        """Consume until something fails; ``backoff.reset()`` after each batch that went through."""
        raise NotImplementedError


def by_link_topic(config: Config) -> str:
    """The worker's repartition topic: envelopes keyed by link name (see streams.router)."""
    return f"{config.app_id}-by-link"


def corrections_topic(config: Config) -> str:
    """The sink's requests, keyed ``<link>:<user>``. Created before faust starts: a worker
    that leads the first assignment before its metadata knows a topic it has just created
    assigns that topic to nobody."""
    return f"{config.app_id}-corrections"


def ssl_context(config: Config) -> ssl.SSLContext:
    """TLS to Kafka: the configured CA (or the system's), a client certificate for mutual TLS."""
    kafka = config.kafka
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    context.check_hostname = kafka.ssl_check_hostname
    return context


def topic_specs(config: Config, *, worker: bool = False) -> list[NewTopic]:
    kafka = config.kafka
    specs = [
        NewTopic(name, kafka.partitions, kafka.replication_factor, topic_configs=dict(UNLIMITED))
        for name in (kafka.events_topic, kafka.dlq_topic, kafka.outcomes_topic)
    ]
    if worker:  # derived from the events topic, so the broker's default retention is enough
        for name in (by_link_topic(config), corrections_topic(config)):
            specs.append(NewTopic(name, kafka.partitions, kafka.replication_factor))
    return specs


async def ensure_topics(config: Config, request_timeout_ms: int = 10_000, *, worker: bool = False) -> list[str]:
    """Create the usync topics that are missing (with ``worker``, its repartition topic too);
    return the names created. The router must never produce to a topic the broker would
    auto-create with one partition."""
    admin = AIOKafkaAdminClient(**client_options(config), request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(config, worker=worker) if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race; fine
            log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()

"""The bridge's outlet to Kafka: one acks=all idempotent producer (started and replaced
with backoff, never given up on) and the per-partition batches the relays fill."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar

import aiokafka
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streams.contract.config import Config
from streams.adapters.kafka.client import client_options
from streams.adapters.kafka.producers import ReplaceableProducer, known_partitions
from streams.adapters.kafka.topics import ensure_topics, producer_codec
from streams.errors import KafkaRefused, KafkaUnavailable

from bridges.health import Health
from bridges.metrics import BridgeMetrics
from bridges.records import Record

log = logging.getLogger("usync.bridge.kafka")

T = TypeVar("T")


class SendFailed(KafkaUnavailable):
    """Kafka did not take a record; the relay tears its connection down and retries."""

    def __init__(self, message: str, producer: Any) -> None:
        super().__init__(message)
        self.producer = producer  # which producer failed


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: tuple[int, ...]) -> int:
    """Kafka's default partitioner (murmur2, as the Java client), cached: a queue's key
    never changes, and the pure-Python hash is a tenth of the bridge's per-message cost."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class KafkaOutlet:
    """The bridge's producer (``ReplaceableProducer``: started with the topics created first,
    dropped after a failed send, started again by the next relay that needs it)."""

    HEALTH_NAME = "kafka"

    def __init__(self, config: Config, health: Health, metrics: BridgeMetrics, rng: random.Random | None = None) -> None:
        self.config = config
        self.health = health
        self.metrics = metrics
        self.topics = {"events": config.kafka.events_topic, "dlq": config.kafka.dlq_topic}
        self._producer = ReplaceableProducer(
            client_options(config), "bridge", prepare=lambda: ensure_topics(config), on_state=self._state,
            rng=rng or random.Random(),  # each start backs off from 1 s again: an outage does not grow the next
            linger_ms=0, max_batch_size=256 * 1024, request_timeout_ms=30_000,
            compression_type=producer_codec(config.kafka.compression.events),
        )

    def _state(self, failure: BaseException | None) -> None:
        if failure is None:
            self.metrics.kafka_up.set(1)
            self.health.set(self.HEALTH_NAME, "connected")
            log.info("Kafka producer connected")
        elif isinstance(failure, KafkaRefused):  # named once as an ERROR by the producer's KafkaAccess
            self.metrics.kafka_up.set(0)
            self.health.set(self.HEALTH_NAME, "refused", str(failure))
        else:
            self.metrics.kafka_up.set(0)
            self.health.set(self.HEALTH_NAME, "disconnected", f"{type(failure).__name__}: {failure}")

    @property
    def producer(self) -> aiokafka.AIOKafkaProducer | None:
        return self._producer.producer

    async def ready(self) -> None:
        """Wait until a producer is connected (starting one if needed)."""
        if not self._producer.up:
            if self.HEALTH_NAME not in self.health.components:
                self.health.set(self.HEALTH_NAME, "starting")
            await self._producer.start()

    def batches(self) -> "Batches":
        """A batcher for one relay connection, bound to the current producer."""
        producer = self._producer.producer
        if producer is None:
            raise SendFailed("producer not started", None)
        return Batches(self, producer)

    async def reset(self, failure: SendFailed) -> None:
        """Drop the producer that failed; the next ``ready()`` builds a new one.

        An idempotent producer whose batches expired can be left with a broken
        sequence; a fresh producer (new producer id) is always safe.
        """
        if failure.producer is not None:
            await self._producer.drop(failure.producer, failure)

    async def stop(self) -> None:
        await self._producer.stop()
        self.health.set(self.HEALTH_NAME, "stopped")


# on_delivered(future, items, topic_kind, opened_at): the batch's send future, the items
# added with its records (in order), "events" or "dlq", and time.perf_counter() at its
# first record.
Delivered = Callable[[asyncio.Future, list[T], str, float], None]

# Partitions remembered per batcher; far more than a connection's queues ever need.
_MAX_REMEMBERED = 4096


class _Open(Generic[T]):
    """A batch being filled: the aiokafka builder and what it was filled with."""

    __slots__ = ("builder", "items", "kind", "opened")

    def __init__(self, builder: Any, kind: str) -> None:
        self.builder = builder
        self.items: list[T] = []
        self.kind = kind
        self.opened = time.perf_counter()


class Batches(Generic[T]):
    """Records gathered per partition into aiokafka batches, each sent as one.

    ``producer.send`` costs about as much per record as reading the message from the
    broker; appending to a batch costs a fraction of it. Each batch's future resolves
    when Kafka acknowledged every record in it; ``on_delivered`` then gets that future
    and the items added with the batch's records, in order.

    One batcher lives as long as one relay connection. It remembers the partition of each
    record key it has seen, so a queue's records keep their partition for the whole
    connection and the common ``add_nowait`` is a dict lookup and an append.

    ``flush(everything=False)`` leaves alone the open batch of a partition that still has
    a batch with the producer (aiokafka has one request in flight per broker): it keeps
    filling and goes out once that batch is acknowledged, instead of queueing behind it.
    A record then waits at most one round trip to be sent, not two or three, so the
    broker's unacked window holds fewer records for the same rate.
    """

    def __init__(self, outlet: KafkaOutlet, producer: aiokafka.AIOKafkaProducer) -> None:
        self.outlet = outlet
        self.producer = producer
        self.open: dict[tuple[str, int], _Open[T]] = {}
        self.count = 0
        self._where: dict[tuple[str, bytes], tuple[str, int]] = {}  # (topic kind, key) -> (topic, partition)
        self._outstanding: dict[tuple[str, int], int] = {}  # batches with the producer, per partition
        # FIFO: batches of one partition reach the producer in the order they were closed.
        self._sending = asyncio.Lock()

    async def _partition(self, topic: str, key: bytes) -> int:
        known = known_partitions(self.producer, topic)
        if not known:  # first record for this topic on this producer: wait for its metadata
            try:
                known = await self.producer.partitions_for(topic)
            except KafkaError as exc:
                await self._failed(exc)
        return partition_for(key, tuple(sorted(known)))

    async def _failed(self, exc: KafkaError) -> NoReturn:
        failure = SendFailed(f"{type(exc).__name__}: {exc}", self.producer)
        await self.outlet.reset(failure)
        raise failure from exc

    def add_nowait(self, record: Record, item: T) -> bool:
        """Append ``record`` if that needs no I/O (its partition is known and its batch has
        room); ``False`` otherwise, and then ``add`` must take it."""
        where = self._where.get((record.topic_kind, record.key))
        if where is None:
            return False
        batch = self.open.get(where)
        if batch is None:
            batch = self.open[where] = _Open(self.producer.create_batch(), record.topic_kind)
        if batch.builder.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
            return False  # full, and closed by the builder: ``add`` sends it
        batch.items.append(item)
        self.count += 1
        return True

    async def add(self, record: Record, item: T, on_delivered: Delivered) -> None:
        if self.add_nowait(record, item):
            return
        kind = record.topic_kind
        topic = self.outlet.topics[kind]
        where = (topic, await self._partition(topic, record.key))
        if len(self._where) >= _MAX_REMEMBERED:
            self._where.clear()
        self._where[(kind, record.key)] = where
        batch = self.open.get(where)
        appended = batch is not None and batch.builder.append(
            key=record.key, value=record.value, timestamp=None, headers=record.headers
        ) is not None
        if not appended:
            if batch is not None:
                await self._send(where, on_delivered)  # full: this one starts the next batch
            batch = self.open[where] = _Open(self.producer.create_batch(), kind)
            batch.builder.append(key=record.key, value=record.value, timestamp=None, headers=record.headers)
        batch.items.append(item)
        self.count += 1

    async def flush(self, on_delivered: Delivered, *, everything: bool = True) -> None:
        """Send the open batches; with ``everything=False`` only those of partitions that
        have no batch with the producer."""
        outstanding = self._outstanding
        for where in list(self.open):
            if everything or where not in outstanding:
                await self._send(where, on_delivered)

    async def _send(self, where: tuple[str, int], on_delivered: Delivered) -> None:
        # The reader and the flusher both send: the other may have taken this batch already.
        batch = self.open.pop(where, None)
        if batch is None or not batch.items:
            return
        self.count -= len(batch.items)
        outstanding = self._outstanding
        outstanding[where] = outstanding.get(where, 0) + 1
        topic, partition = where
        try:
            async with self._sending:
                future = await self.producer.send_batch(batch.builder, topic, partition=partition)
        except KafkaError as exc:
            await self._failed(exc)
        items, kind, opened = batch.items, batch.kind, batch.opened

        def delivered(future: asyncio.Future) -> None:
            left = outstanding[where] - 1
            if left:
                outstanding[where] = left
            else:
                del outstanding[where]
            on_delivered(future, items, kind, opened)

        future.add_done_callback(delivered)

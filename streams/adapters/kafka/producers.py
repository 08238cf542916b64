"""The producers of every usync process: idempotent, acks=all, replaced after a failure.

One mechanism for the bridge and the worker (:class:`ReplaceableProducer`): after an
outage an idempotent producer can be left answering OutOfOrderSequenceNumber to every
send; a new producer (new producer id) is always safe. However many concurrent sends
saw the old one fail, it is replaced once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner, murmur2

from streams.adapters.kafka.client import KafkaAccess, close_quietly, kafka_transient
from streams.errors import KafkaUnavailable
from streams.retry import CAP_SECONDS, Backoff, retry_forever

log = logging.getLogger("usync.kafka")

#: Told when the producer is up (``None``) or why it is not (the failure).
StateHook = Callable[[BaseException | None], None]


class ReplaceableProducer:
    """An idempotent acks=all producer that a failed send replaces with a new one.

    ``prepare`` runs before each start (the bridge creates its topics there); ``on_state``
    hears every start, failure and replacement (health, metrics); ``access`` (the process's,
    else one of its own) turns a refused start into :class:`streams.errors.KafkaRefused`.
    """

    def __init__(self, options: dict[str, Any], what: str, *, prepare: Callable[[], Awaitable[Any]] | None = None,
                 on_state: StateHook | None = None, rng: random.Random | None = None,
                 access: KafkaAccess | None = None, backoff_cap: float = CAP_SECONDS, **settings: Any) -> None:
        self._options = options
        self._what = what
        self._settings = settings
        self._prepare = prepare
        self._on_state = on_state or (lambda _failure: None)
        self._rng = rng or random.Random()
        self._backoff_cap = backoff_cap
        self.access = access or KafkaAccess(options)
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()
        self._starting: asyncio.Lock = asyncio.Lock()

    @property
    def up(self) -> bool:
        return self._producer is not None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The producer now (None while none is up)."""
        return self._producer

    async def start(self) -> None:
        """Start a producer, however long Kafka takes to answer (no-op when one is up)."""
        async with self._starting:
            if self._producer is None:
                self._producer = await retry_forever(lambda: self.access.attempt(self._start_one),
                                                     f"{self._what} producer", transient=kafka_transient,
                                                     backoff=Backoff(cap=self._backoff_cap, rng=self._rng),
                                                     on_retry=lambda exc, _delay: self._on_state(exc))
                self._started.set()
                self._on_state(None)

    async def _start_one(self) -> AIOKafkaProducer:
        if self._prepare is not None:
            await self._prepare()
        producer = AIOKafkaProducer(**self._options, acks="all", enable_idempotence=True, **self._settings)
        try:
            await producer.start()
        except BaseException:
            await close_quietly(producer, f"{self._what} producer")
            raise
        return producer

    async def stop(self) -> None:
        self._started.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def current(self) -> AIOKafkaProducer:
        """The producer to send on; waits for :meth:`start` (Kafka may still be down)."""
        while self._producer is None:
            await self._started.wait()
        return self._producer

    async def replace(self, failed: AIOKafkaProducer, reason: BaseException | None = None) -> None:
        """Start a new producer in place of ``failed``, unless a concurrent send already did."""
        if await self.drop(failed, reason):
            await self.start()

    async def drop(self, failed: AIOKafkaProducer, reason: BaseException | None = None) -> bool:
        """Take ``failed`` out and close it; the next :meth:`start` makes a new one. False when
        a concurrent caller already did (the first caller takes ``failed`` out before it
        awaits anything: no lock needed)."""
        if self._producer is not failed:
            return False
        self._started.clear()
        self._producer = None
        self._on_state(reason or RuntimeError("a send failed"))
        log.warning("%s producer: a send failed (%s); a new producer replaces it", self._what, reason)
        try:
            await asyncio.wait_for(close_quietly(failed, f"{self._what} producer"), timeout=5)
        except TimeoutError:
            pass  # it is broken already; we only wanted its resources back
        return True


class KeyHashes:
    """aiokafka's default partitioner (Kafka's: murmur2 of the key, modulo the partitions),
    with each key's hash remembered: the sink's facts of one site and offering share their
    key, and murmur2 is pure Python (~4 µs for a 34-byte key, a record's largest cost in
    aiokafka's ``send`` after the batch append). The partition is the default's, always."""

    KEYS = 10_000  # keys remembered; then forgotten all at once and learnt again

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._default(key, all_partitions, available)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.KEYS:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


class RecordSender(ReplaceableProducer):
    """Sends single records and returns once Kafka acknowledged each: the sink's facts
    and outcomes. Batches up to a megabyte per partition, so that many concurrent
    senders share produce requests instead of waiting for small batches to drain."""

    BATCH_BYTES = 1024 * 1024

    def __init__(self, options: dict[str, Any], what: str = "record", linger_ms: int = 5,
                 access: KafkaAccess | None = None, compression: str | None = None,
                 backoff_cap: float = CAP_SECONDS) -> None:
        super().__init__(options, what, access=access, linger_ms=linger_ms, max_batch_size=self.BATCH_BYTES,
                         max_request_size=4 * self.BATCH_BYTES, compression_type=compression,
                         partitioner=KeyHashes(), backoff_cap=backoff_cap)

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        """Put the record in the producer's batch now; answer a future done once Kafka
        acknowledged it (a failure as :meth:`send` raises it). No task per record: the
        correct stage sends 3 facts a correction this way, and a task each cost ~15 µs."""
        producer = await self.current()
        try:
            delivery = await producer.send(topic, value, key=key)
        except Exception as exc:
            await self._failed(producer, exc, topic)
        acked = asyncio.get_running_loop().create_future()
        delivery.add_done_callback(lambda done: self._settle(acked, done, producer, topic))
        return acked

    def _settle(self, acked: asyncio.Future, delivery: asyncio.Future, producer: AIOKafkaProducer, topic: str) -> None:
        if acked.done():
            return
        if delivery.cancelled():
            acked.cancel()
            return
        exc = delivery.exception()
        if exc is None:
            acked.set_result(None)
        elif not kafka_transient(exc):
            acked.set_exception(exc)
        else:  # as _failed: the producer replaced (once, however many records saw it fail)
            replacing = asyncio.ensure_future(self.replace(producer, exc))
            replacing.add_done_callback(lambda task: task.cancelled() or task.exception())
            acked.set_exception(KafkaUnavailable(f"sending to {topic}: {type(exc).__name__}: {exc}"))

    def enqueuer(self, topic: str) -> Callable[[bytes, bytes], Awaitable[asyncio.Future]]:
        """``enqueue(key, value)`` to ``topic``: the :data:`streams.ports.Enqueue` port."""
        async def enqueue(key: bytes, value: bytes) -> asyncio.Future:
            return await self.enqueue(topic, key, value)
        return enqueue

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Send; return once acknowledged. A failed send raises, and the producer is replaced."""
        producer = await self.current()
        try:
            await (await producer.send(topic, value, key=key))
        except Exception as exc:
            await self._failed(producer, exc, topic)

    async def send_to(self, topic: str, partition: int, key: bytes, value: bytes) -> int:
        """Send to one partition; return the record's offset once acknowledged."""
        producer = await self.current()
        try:
            return (await (await producer.send(topic, value, key=key, partition=partition))).offset
        except Exception as exc:
            await self._failed(producer, exc, topic)
            raise  # _failed always raises

    async def send_bulk(self, topic: str, records: list[tuple[bytes, bytes]],
                        partition_of: Callable[[bytes], int]) -> None:
        """Send many records as aiokafka batches per partition (``partition_of`` the key: the
        default partitioner's answer); return once Kafka acknowledged them all. ~3x cheaper a
        record than :meth:`send_all`, whose ``send`` per record costs more than the record."""
        producer = await self.current()
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            by_partition.setdefault(partition_of(key), []).append((key, value))
        try:
            acks = []
            for partition, mine in by_partition.items():
                batch = producer.create_batch()
                for key, value in mine:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        acks.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                acks.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*acks)
        except Exception as exc:
            await self._failed(producer, exc, topic)

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Send every (key, value); return once Kafka acknowledged them all."""
        producer = await self.current()
        try:
            acks = [await producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*acks)
        except Exception as exc:
            await self._failed(producer, exc, topic)

    async def _failed(self, producer: AIOKafkaProducer, exc: Exception, topic: str) -> None:
        """Replace the producer; raise the failure as :class:`KafkaUnavailable` (a bug as itself)."""
        if not kafka_transient(exc):
            raise exc
        await self.replace(producer, exc)
        raise KafkaUnavailable(f"sending to {topic}: {type(exc).__name__}: {exc}") from exc

    def emitter(self, topic: str) -> Callable[[bytes, bytes], Awaitable[None]]:
        """``emit(key, value)`` to ``topic`` (the :data:`streams.ports.Emit` port)."""
        async def emit(key: bytes, value: bytes) -> None:
            await self.send(topic, key, value)
        return emit


def known_partitions(producer: AIOKafkaProducer, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the producer's metadata now, without a request (None
    or empty: not known yet; ``producer.partitions_for`` fetches them). aiokafka has no
    public synchronous view; guarded by tests/unit/test_library_hooks.py."""
    return producer.client.cluster.partitions_for_topic(topic)  # noqa: SLF001

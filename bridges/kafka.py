"""The bridge's single Kafka producer: acks=all, idempotent, started (and restarted)
with backoff, never given up on."""

from __future__ import annotations

import asyncio
import functools
import logging
import random

import aiokafka
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streams.config import Config
from streams.kafka import client_options, ensure_topics
from streams.retry import Backoff

from bridges.health import Health
from bridges.metrics import BridgeMetrics
from bridges.records import Record

log = logging.getLogger("usync.bridge.kafka")


class KafkaUnavailable(Exception):
    """Kafka did not take a record; the relay tears its connection down and retries."""

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation  # which producer failed


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: tuple[int, ...]) -> int:
    """Kafka's default partitioner (murmur2, as the Java client), cached: a queue's key
    never changes, and the pure-Python hash is a tenth of the bridge's per-message cost."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class KafkaOutlet:
    HEALTH_NAME = "kafka"

    def __init__(self, config: Config, health: Health, metrics: BridgeMetrics, rng: random.Random | None = None) -> None:
        self.config = config
        self.health = health
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.topics = {"events": config.kafka.events_topic, "dlq": config.kafka.dlq_topic}
        self.producer: aiokafka.AIOKafkaProducer | None = None
        # Bumped on every new producer, so a failure seen on an old one cannot reset a new one.
        self.generation = 0
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        """Wait until a producer is connected (starting one if needed)."""
        if not self._ready.is_set():
            await self.start()

    async def start(self) -> None:
        async with self._lock:
            if self._ready.is_set():
                return
            backoff = Backoff(rng=self.rng)
            self.health.set(self.HEALTH_NAME, "starting")
            while True:
                try:
                    await ensure_topics(self.config)
                    producer = aiokafka.AIOKafkaProducer(
                        **client_options(self.config),
                        acks="all",
                        enable_idempotence=True,
                        linger_ms=5,
                        max_batch_size=256 * 1024,
                        request_timeout_ms=30_000,
                    )
                    await producer.start()
                    break
                except (KafkaError, OSError) as exc:
                    delay = backoff.next_delay()
                    self.health.set(self.HEALTH_NAME, "disconnected", f"{type(exc).__name__}: {exc}")
                    log.warning("Kafka unavailable (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
            self.producer = producer
            self.generation += 1
            self._ready.set()
            self.metrics.kafka_up.set(1)
            self.health.set(self.HEALTH_NAME, "connected")
            log.info("Kafka producer connected")

    async def send(self, record: Record) -> asyncio.Future:
        """Queue ``record``; the returned future resolves when Kafka has acknowledged it."""
        producer = self.producer
        if producer is None:
            raise KafkaUnavailable("producer not started", self.generation)
        topic = self.topics[record.topic_kind]
        known = producer.client.cluster.partitions_for_topic(topic)
        partition = partition_for(record.key, tuple(sorted(known))) if known else None
        try:
            return await producer.send(topic, record.value, key=record.key, headers=record.headers, partition=partition)
        except KafkaError as exc:
            await self.reset(exc, self.generation)
            raise KafkaUnavailable(str(exc), self.generation) from exc

    async def reset(self, reason: BaseException, generation: int) -> None:
        """Drop the producer after a failure; the next ``ready()`` builds a new one.

        An idempotent producer whose batches expired can be left with a broken
        sequence; a fresh producer (new producer id) is always safe.
        """
        async with self._lock:
            if not self._ready.is_set() or generation != self.generation:
                return
            self._ready.clear()
            self.metrics.kafka_up.set(0)
            self.health.set(self.HEALTH_NAME, "disconnected", f"{type(reason).__name__}: {reason}")
            producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=5)
            except Exception:  # it is broken already; we only want its resources back
                pass

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        self._ready.clear()
        self.health.set(self.HEALTH_NAME, "stopped")

"""The route stage: events topic -> ``<app>-by-link``, many envelopes per record.

Folding needs both sides of a link in one partition, so every envelope is copied to
the repartition topic keyed by link name. Faust costs tens of microseconds per record
it delivers to an agent, which caps a worker near 10k records/s whatever the agent
does; so this stage runs on aiokafka directly (a consumer group of its own, batch
``getmany``) and writes one record per link per batch: a JSON array of the envelopes'
original bytes. The fold agent then pays faust's per-record cost once per array.

At-least-once (invariant 1): offsets are committed only after Kafka acknowledged every
record the batch produced. A crash re-routes the uncommitted tail; the fold ignores
the duplicates (invariant 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError

from streams.config import Config
from streams.core import Routes
from streams.kafka import Stage, client_options, close_quietly
from streams.metrics import Metrics
from streams.retry import Backoff
from streams.schema import Envelope
from streams.transport import FETCH_MAX_WAIT_MS

log = logging.getLogger("usync.router")

#: Bounds of one by-link record: well under Kafka's default 1 MB message size.
MAX_RECORD_BYTES = 512 * 1024
MAX_RECORD_ENVELOPES = 2_000
FETCH_RECORDS = 10_000


class Address(msgspec.Struct):
    """The two fields routing reads; decoding only these skips the rest of the envelope."""

    site: str
    offering_uuid: str


_address = msgspec.json.Decoder(Address)
unpack = msgspec.json.Decoder(list[Envelope]).decode


def route_values(routes: Routes, values: Iterable[bytes]) -> tuple[dict[str, list[bytes]], int]:
    """Group raw envelopes by the links they feed, in input order; count the unroutable."""
    by_link: dict[str, list[bytes]] = {}
    unrouted = 0
    for value in values:
        try:
            address = _address.decode(value)
        except msgspec.DecodeError:  # the bridge dead-letters these; a stray writer may not
            unrouted += 1
            continue
        found = routes.of(address.site, address.offering_uuid)
        if not found:
            unrouted += 1
        for link, _side in found:
            by_link.setdefault(link.name, []).append(value)
    return by_link, unrouted


def pack(values: list[bytes], max_bytes: int = MAX_RECORD_BYTES, max_count: int = MAX_RECORD_ENVELOPES) -> Iterator[bytes]:
    """JSON arrays of the values, in order, each within the bounds (a lone oversized value still goes)."""
    chunk: list[bytes] = []
    size = 0
    for value in values:
        if chunk and (size + len(value) + 1 > max_bytes or len(chunk) >= max_count):
            yield b"[" + b",".join(chunk) + b"]"
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


class Router(Stage):
    name = "router"

    def __init__(self, config: Config, routes: Routes, metrics: Metrics, by_link_topic: str) -> None:
        self.config = config
        self.routes = routes
        self.metrics = metrics
        self.by_link_topic = by_link_topic
        self.group_id = f"{config.app_id}-route"
        self.connected = False

    async def serve(self, backoff: Backoff) -> None:
        options = client_options(self.config)
        consumer = AIOKafkaConsumer(
            self.config.kafka.events_topic, **options, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # a catching-up route never idles on a long poll
        )
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True, linger_ms=5,
                                    max_batch_size=1 << 20, max_request_size=4 << 20)
        try:
            await consumer.start()
            await producer.start()
            self.connected = True
            log.info("router: consuming %s as group %s", self.config.kafka.events_topic, self.group_id)
            while True:
                fetched = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
                if fetched:
                    await self._route(consumer, producer, fetched)
                    backoff.reset()
        finally:
            self.connected = False
            await close_quietly(producer, "router")
            await close_quietly(consumer, "router")

    async def _route(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, fetched: dict[Any, list[Any]]) -> None:
        by_link, unrouted = route_values(self.routes, (m.value for messages in fetched.values() for m in messages))
        acks = [
            await producer.send(self.by_link_topic, value=record, key=link.encode())
            for link, values in by_link.items()
            for record in pack(values)
        ]
        await asyncio.gather(*acks)
        if unrouted:
            self.metrics.events_unrouted.inc(unrouted)
        self.metrics.events_routed.inc(sum(len(m) for m in fetched.values()))
        try:
            await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in fetched.items()})
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions: the new owner re-routes
            log.info("router: commit after rebalance refused (%s); the batch will be routed again", exc)


"""The checkpoints topic: finding the newest complete checkpoint of each partition before an instant.

Each partition of the checkpoints topic holds the checkpoints of the table partition
with the same number (``streams.stages.checkpoint``): parts, then the manifest naming
them; every record points at the partition's previous manifest. So the newest manifest
before an instant is found from the last record before it (``offsets_for_times``) by
following ``previous``: one or two reads of a record per partition, whatever the length
of the history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.adapters.kafka.client import client_options, kafka_transient
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.readers import partitions_of, reader
from streams.adapters.kafka.topics import by_link_topic
from streams.contract.config import Config
from streams.core.checkpoint import CheckpointManifest, CheckpointPart, checkpoint_decoder
from streams.retry import retry_forever

READ_TIMEOUT_MS = 15_000


class Found(NamedTuple):
    """One partition's checkpoint: its manifest, the manifest's offset and its parts."""

    manifest: CheckpointManifest
    offset: int
    parts: list[CheckpointPart]


async def _read_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> CheckpointManifest | CheckpointPart:
    consumer.seek(tp, offset)
    records = await consumer.getmany(tp, timeout_ms=READ_TIMEOUT_MS, max_records=1)
    for record in records.get(tp, ()):
        return checkpoint_decoder.decode(record.value)
    raise TimeoutError(f"no record at {tp.topic}[{tp.partition}]@{offset} within {READ_TIMEOUT_MS / 1000:.0f} s")


async def newest_manifest(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int,
                          until: datetime | None) -> tuple[CheckpointManifest, int] | None:
    """The newest manifest on ``tp`` below offset ``end`` whose state is as of ``until`` or before."""
    if end <= 0:
        return None
    offset = end - 1
    while offset >= 0:
        record = await _read_at(consumer, tp, offset)
        if isinstance(record, CheckpointManifest) and (until is None or record.instant <= until):
            return record, offset
        offset = record.previous
    return None


async def read_parts(consumer: AIOKafkaConsumer, tp: TopicPartition, manifest: CheckpointManifest) -> list[CheckpointPart]:
    """The manifest's parts, read in one sweep from its first to its last."""
    wanted = set(manifest.parts)
    parts: list[CheckpointPart] = []
    if not wanted:
        return parts
    consumer.seek(tp, min(wanted))
    last = max(wanted)
    while len(parts) < len(wanted):
        records = await consumer.getmany(tp, timeout_ms=READ_TIMEOUT_MS, max_records=100)
        if not records:
            raise TimeoutError(f"checkpoint {manifest.checkpoint_id}: parts missing on {tp.topic}[{tp.partition}]")
        for record in records.get(tp, ()):
            if record.offset in wanted:
                part = checkpoint_decoder.decode(record.value)
                assert isinstance(part, CheckpointPart), f"{tp}@{record.offset} is not a checkpoint part"
                parts.append(part)
            if record.offset >= last:
                break
    return parts


async def find(consumer: AIOKafkaConsumer, topic: str, partitions: list[TopicPartition],
               until: datetime | None) -> dict[int, Found]:
    """Per partition of the checkpoints topic, its newest checkpoint as of ``until`` (or now)."""
    if not partitions:
        return {}
    consumer.assign(partitions)
    if until is None:
        ends = await consumer.end_offsets(partitions)
    else:
        found = await consumer.offsets_for_times({tp: int(until.timestamp() * 1000) + 1 for tp in partitions})
        latest = await consumer.end_offsets(partitions)
        ends = {tp: found[tp].offset if found.get(tp) else latest[tp] for tp in partitions}
    result: dict[int, Found] = {}
    for tp in partitions:
        newest = await newest_manifest(consumer, tp, ends[tp], until)
        if newest is not None:
            manifest, offset = newest
            result[tp.partition] = Found(manifest, offset, await read_parts(consumer, tp, manifest))
    return result


class TopicSink:
    """The checkpoints topic for the checkpoint stage (``streams.stages.checkpoint.CheckpointSink``)."""

    def __init__(self, config: Config, records: RecordSender) -> None:
        self.config, self.records = config, records
        self.topic = config.kafka.checkpoints_topic

    async def previous(self, partition: int) -> tuple[int, datetime | None]:
        """The partition's newest manifest: (offset, instant), (-1, None) when it has none;
        waits out Kafka (the checkpoint timer must not take the worker down)."""
        return await retry_forever(lambda: self._previous(partition), f"the newest checkpoint of {self.topic}[{partition}]",
                                   transient=kafka_transient)

    async def _previous(self, partition: int) -> tuple[int, datetime | None]:
        async with reader(self.config) as consumer:
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            newest = await newest_manifest(consumer, tp, end, None)
        return (-1, None) if newest is None else (newest[1], newest[0].instant)

    async def send(self, partition: int, key: bytes, value: bytes) -> int:
        return await retry_forever(lambda: self.records.send_to(self.topic, partition, key, value),
                                   f"checkpoint record to {self.topic}[{partition}]", transient=kafka_transient)


async def committed(options: dict[str, Any], group: str, topic: str) -> dict[int, int]:
    """``group``'s committed offsets on ``topic``, per partition (none committed: absent)."""
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=15_000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


def fold_fence(config: Config, caught_up: Callable[[dict[int, int], float], Awaitable[bool]],
               timeout: float) -> Callable[[set[int]], Awaitable[dict[int, int] | None]]:
    """The checkpoint stage's fence (``streams.stages.checkpoint``): the route group's committed
    events offsets, once the fold reached the by-link end offsets taken after them."""
    options, by_link = client_options(config), by_link_topic(config)

    async def ends(partitions: set[int]) -> dict[int, int]:
        async with reader(config) as consumer:
            tps = [TopicPartition(by_link, p) for p in partitions]
            return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}

    async def fence(partitions: set[int]) -> dict[int, int] | None:
        def patiently(call: Callable[[], Awaitable[Any]], what: str) -> Awaitable[Any]:
            return retry_forever(call, f"checkpoint fence: {what}", transient=kafka_transient)

        covers = await patiently(lambda: committed(options, f"{config.app_id}-route", config.kafka.events_topic),
                                 "the route group's offsets")
        by_link_ends = await patiently(lambda: ends(partitions), "the by-link end offsets")
        folded = await patiently(lambda: committed(options, config.app_id, by_link), "the fold's offsets")
        waiting = {p: end for p, end in by_link_ends.items() if folded.get(p, 0) < end}
        if waiting and not await caught_up(waiting, timeout):
            return None
        events = await patiently(lambda: _events_partitions(config), "the events topic's partitions")
        return {p: covers.get(p, 0) for p in events}
    return fence


async def _events_partitions(config: Config) -> list[int]:
    async with reader(config) as consumer:
        return [tp.partition for tp in await partitions_of(consumer, config.kafka.events_topic)]

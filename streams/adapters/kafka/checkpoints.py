"""The checkpoints topic: finding the newest complete checkpoint of each partition before an instant.

Each partition of the checkpoints topic holds the checkpoints of the table partition
with the same number (``streams.stages.checkpoint``): parts, then the manifest naming
them; every record points at the partition's previous manifest. So the newest manifest
before an instant is found from the last record before it (``offsets_for_times``) by
following ``previous``: one or two reads of a record per partition, whatever the length
of the history.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.core.checkpoint import CheckpointManifest, CheckpointPart, checkpoint_decoder

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


async def parts_of(consumer: AIOKafkaConsumer, tp: TopicPartition, manifest: CheckpointManifest) -> list[CheckpointPart]:
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
            result[tp.partition] = Found(manifest, offset, await parts_of(consumer, tp, manifest))
    return result

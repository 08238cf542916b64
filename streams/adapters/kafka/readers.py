"""Reading usync topics without a consumer group (never moves a worker's offsets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords

from streams.adapters.kafka.client import client_options
from streams.contract.config import Config

REQUEST_TIMEOUT_MS: Final = 15_000


def as_read(value: bytes | None) -> bytes | None:
    """A consumer's ``value_deserializer`` that leaves values as read, and tells
    :func:`_records_as_read` to hand out aiokafka's own records (see :func:`reader`)."""
    return value


_consumer_record: Final = PartitionRecords._consumer_record  # noqa: SLF001


def _records_as_read(self: PartitionRecords, tp: TopicPartition, record: Any) -> Any:
    """aiokafka's record itself (``offset``, ``key``, ``value``, ``timestamp``, ``headers``; no
    ``topic`` or ``partition``: the batch's dict says them) for a consumer whose
    deserializer is :func:`as_read`, instead of a ConsumerRecord built from it."""
    if self._value_deserializer is as_read and self._key_deserializer is None:  # noqa: SLF001
        return record
    return _consumer_record(self, tp, record)


# aiokafka has no option to skip the ConsumerRecord (a dataclass built in Python per record):
# measured, building it is 1.4 of the 2.3 µs of CPU a record costs a consumer (200k records,
# getmany; 0.95 µs without). This private hook (guarded by
# tests/unit/test_library_hooks.py) changes nothing for any other consumer: theirs have no such deserializer.
PartitionRecords._consumer_record = _records_as_read  # type: ignore[method-assign]  # noqa: SLF001


@asynccontextmanager
async def reader(config: Config, *, records_as_read: bool = False, **settings: Any,
                 ) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with manual assignment only; stopped on exit. ``records_as_read``:
    ``getmany`` gives aiokafka's records (``offset`` and ``value`` as a ConsumerRecord's;
    no ``topic``, ``partition``), each 1.4 µs cheaper."""
    options = dict(group_id=None, enable_auto_commit=False, request_timeout_ms=REQUEST_TIMEOUT_MS,
                   metadata_max_age_ms=5_000)
    if records_as_read:
        options["value_deserializer"] = as_read
    consumer = AIOKafkaConsumer(**client_options(config), **{**options, **settings})
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``. The consumer's own cluster view only knows subscribed
    topics, and aiokafka has no public call for all metadata: this is its one private
    hook (guarded by tests/unit/test_library_hooks.py)."""
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]

"""Reading usync topics without a consumer group (never moves a worker's offsets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.adapters.kafka.client import client_options
from streams.contract.config import Config

REQUEST_TIMEOUT_MS: Final = 15_000


@asynccontextmanager
async def reader(config: Config, **settings: Any) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with manual assignment only; stopped on exit."""
    options = dict(group_id=None, enable_auto_commit=False, request_timeout_ms=REQUEST_TIMEOUT_MS,
                   metadata_max_age_ms=5_000)
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

"""Reading usync topics without a consumer group (never moves a worker's offsets)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import Config
from streams.kafka import client_options

REQUEST_TIMEOUT_MS: Final = 15_000
_RELATIVE: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An ISO time (naive means UTC) or a duration back from now: ``90s``, ``15m``, ``2h``, ``7d``."""
    now = now or datetime.now(timezone.utc)
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
    return aware(datetime.fromisoformat(text))


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@asynccontextmanager
async def reader(config: Config) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with manual assignment only; stopped on exit."""
    consumer = AIOKafkaConsumer(**client_options(config), group_id=None, enable_auto_commit=False,
                                request_timeout_ms=REQUEST_TIMEOUT_MS, metadata_max_age_ms=5_000)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # The consumer's own cluster view only knows subscribed topics: ask for all metadata.
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 (as streams.replay does)
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]


async def start_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                        since: datetime | None) -> dict[TopicPartition, int]:
    """The first offset at or after ``since`` in each partition (the beginning without it)."""
    if since is None:
        return await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
    return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in partitions}

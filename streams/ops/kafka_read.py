"""Time arguments of the operator commands, and where a topic's reading starts."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.adapters.kafka.readers import REQUEST_TIMEOUT_MS, partitions_of, reader

__all__ = ["REQUEST_TIMEOUT_MS", "aware", "parse_when", "partitions_of", "reader", "start_offsets"]
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


async def start_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                        since: datetime | None) -> dict[TopicPartition, int]:
    """The first offset at or after ``since`` in each partition (the beginning without it)."""
    if since is None:
        return await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
    return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in partitions}

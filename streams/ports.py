"""What the stages need from the world, as Protocols (the adapters implement them).

A stage gets these injected by the composition root (``streams.app``): production wires
the HTTP client (``streams.adapters.waldur``) and Kafka producers
(``streams.adapters.kafka``); unit tests wire ``streams.adapters.memory``.
"""

from __future__ import annotations

import asyncio

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Protocol

from streams.contract.schema import OfferingUserRecord
from streams.core import TableState

#: Writes (key, value) to one topic and returns once Kafka acknowledged it.
Emit = Callable[[bytes, bytes], Awaitable[None]]
#: Put (key, value) on the way to a topic now; the answer is a future done once Kafka
#: acknowledged it (``RecordSender.enqueuer``): no task per record.
Enqueue = Callable[[bytes, bytes], Awaitable["asyncio.Future[None]"]]

#: Writes every (key, value) to one topic and returns once Kafka acknowledged them all.
EmitAll = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]

#: (HTTP status, the offering user when the status is 200).
Answer = tuple[int, OfferingUserRecord | None]

#: One listing page: (page number, X-Result-Count, records, last page).
Page = tuple[int, int, list[OfferingUserRecord], bool]


class OfferingUsers(Protocol):
    """One Waldur site's offering-user API. Transient failures (5xx, 429, timeouts) are
    retried inside; past the call's attempts it raises :class:`streams.errors.GaveUp`."""

    name: str

    async def get_offering_user(self, uuid: str) -> Answer: ...

    async def find_offering_user(self, offering_uuid: str, user_username: str) -> Answer:
        """The offering user of ``user_username`` on ``offering_uuid``; 404 when there is none."""
        ...

    async def patch_username(self, uuid: str, username: str) -> Answer: ...

    def list_offering_users(self, offering_uuid: str, states: list[str]) -> AsyncIterator[Page]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...

    def micros(self) -> int:
        """Microseconds since the epoch (observation times in the table)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def micros(self) -> int:
        return int(time.time() * 1_000_000)


class LinkGroup(Protocol):
    """One link's share of a fold batch: its name, its envelopes' raw bytes, where each
    value was read (``places``: (topic, partition, offset), for the DLQ), and where its
    state lives (the adapter's handle on the link's partition)."""

    link: str
    values: list[bytes]
    places: list[tuple[str, int, int]]


class Record(Protocol):
    """One consumed Kafka record (an aiokafka ``ConsumerRecord`` is one)."""

    topic: str
    partition: int
    offset: int
    value: bytes


class FoldTables(Protocol):
    """The fold's table: write-behind state for one batch, then durable writes."""

    state: TableState

    def partition(self, group: Any) -> AbstractContextManager[None]:
        """Fold ``group`` inside this: the state reads and writes the link's partition."""
        ...

    def take_changes(self) -> Any:
        """The batch's changes so far (each key once); the buffer starts over."""
        ...

    def write(self, group: Any, changes: Any) -> Iterable[Awaitable[None]]:
        """Apply ``changes`` to the store; return the sends that make them durable."""
        ...

"""The checkpoint stage: each worker writes the table of every partition it folds, at an interval.

A checkpoint of table partition ``p`` (``streams.core.checkpoint``) goes to partition
``p`` of the checkpoints topic: its rows and parked events in parts of 1,000 rows, then
a manifest with the instant the state is as of and, per events-topic partition, an
offset before which every fact is in the state (``covers``). How that offset is known,
with nothing but what Kafka keeps:

1. ``covers`` is the route stage's committed offsets (its group's, at the coordinator):
   the route commits only after Kafka acknowledged the by-link records of what it read;
2. then the by-link topic's end offsets of ``p``: every such record lies below them;
3. then the fold has folded ``p`` up to those offsets (:meth:`FoldPositions.caught_up`).

The copy does not stall the fold: the rows are read in slices with the fold running in
between, and the keys the fold wrote meanwhile are read again at the end in one step;
a key unchanged since the start has the same value at the end, so the copy is the table
at that instant. Measured: ``bench/bench_history.py`` (the cost per row).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Protocol

from streams.core import Pending, Row
from streams.core.checkpoint import CheckpointManifest, checkpoint_encoder, parts_of
from streams.metrics import Metrics
from streams.ports import Clock, SystemClock

log = logging.getLogger("usync.checkpoint")

SLICE = 5000  # rows copied or encoded between two yields to the loop
CATCH_UP = 120.0  # seconds the fold may take to reach the fence before the checkpoint waits for the next try
RETRY = 60.0  # seconds before a checkpoint that could not be taken is tried again


class CheckpointDeferred(Exception):
    """A checkpoint asked for now could not be taken yet (try again)."""


class CheckpointSource(Protocol):
    """The worker's tables, as the checkpoint stage reads them (``streams.adapters.faust.tables``)."""

    def active(self) -> set[int]: ...

    def keys(self, partition: int) -> list[bytes]: ...

    def value(self, partition: int, key: bytes) -> bytes | None: ...

    def watch(self, partition: int) -> set[bytes]: ...

    def unwatch(self, partition: int) -> None: ...

    def pending(self, partition: int) -> list[Pending]: ...

    def marks(self, partition: int) -> dict[str, int]: ...

    def decode(self, key: bytes, value: bytes) -> Row: ...


class CheckpointSink(Protocol):
    """The checkpoints topic (``streams.adapters.kafka.checkpoints``)."""

    async def previous(self, partition: int) -> tuple[int, datetime | None]: ...

    async def send(self, partition: int, key: bytes, value: bytes) -> int: ...


#: The route stage's committed offsets on the events topic once the fold reached the
#: by-link end offsets of ``partitions``; None when it did not within ``CATCH_UP``.
Fence = Callable[[set[int]], Awaitable[dict[int, int] | None]]


class Checkpointer:
    def __init__(self, source: CheckpointSource, sink: CheckpointSink, fence: Fence, interval: float,
                 metrics: Metrics, clock: Clock | None = None) -> None:
        self.source, self.sink, self.fence = source, sink, fence
        self.interval = interval
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.last: dict[int, tuple[int, datetime | None]] = {}  # partition -> its newest manifest (offset, instant)
        self.next_try = 0.0

    async def tick(self) -> None:
        """Checkpoint the partitions whose newest checkpoint is ``interval`` old (a timer calls this)."""
        if time.monotonic() < self.next_try:
            return
        due = await self._due()
        if not due:
            return
        covers = await self.fence(due)
        if covers is None:
            log.info("checkpoint of partitions %s waits: the fold has not caught up yet", sorted(due))
            self.next_try = time.monotonic() + RETRY
            return
        for partition in sorted(due & self.source.active()):
            await self.checkpoint(partition, covers)

    async def now(self) -> list[dict[str, object]]:
        """A checkpoint of every partition this worker folds, now (``POST /usync/checkpoint/``)."""
        partitions = self.source.active()
        for partition in partitions:
            if partition not in self.last:
                self.last[partition] = await self.sink.previous(partition)
        covers = await self.fence(partitions)
        if covers is None:
            raise CheckpointDeferred("the fold has not caught up with the by-link topic yet")
        written = [await self.checkpoint(partition, covers) for partition in sorted(partitions & self.source.active())]
        return [{"partition": m.partition, "rows": m.rows, "instant": m.instant.isoformat()} for m in written]

    async def _due(self) -> set[int]:
        now = self.clock.now()
        due = set()
        for partition in self.source.active():
            if partition not in self.last:
                self.last[partition] = await self.sink.previous(partition)
            instant = self.last[partition][1]
            if instant is None or now - instant >= timedelta(seconds=self.interval):
                due.add(partition)
        return due

    async def checkpoint(self, partition: int, covers: dict[int, int]) -> CheckpointManifest:
        """Copy the partition's state (see the module's docstring) and write it."""
        started = time.perf_counter()
        values, pending, marks, instant = await self._copy(partition)
        rows = []
        for i, (key, value) in enumerate(values.items()):
            rows.append(self.source.decode(key, value))
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        checkpoint_id = uuid.uuid4().hex
        previous = self.last.get(partition, (-1, None))[0]
        offsets = []
        for part in parts_of(checkpoint_id, partition, rows, pending, previous):
            offsets.append(await self.sink.send(partition, str(partition).encode(), checkpoint_encoder.encode(part)))
        manifest = CheckpointManifest(checkpoint_id=checkpoint_id, partition=partition, instant=instant, covers=covers,
                                      parts=offsets, rows=len(rows), links=sorted({row.link for row in rows}),
                                      marks=marks, previous=previous)
        offset = await self.sink.send(partition, str(partition).encode(), checkpoint_encoder.encode(manifest))
        self.last[partition] = (offset, instant)
        self.metrics.checkpoints.labels("written").inc()
        log.info("checkpoint of partition %d: %d rows as of %s in %.2f s", partition, len(rows), instant.isoformat(),
                 time.perf_counter() - started)
        return manifest

    async def _copy(self, partition: int) -> tuple[dict[bytes, bytes], list[Pending], dict[str, int], datetime]:
        source = self.source
        touched = source.watch(partition)
        try:
            keys = source.keys(partition)
            values: dict[bytes, bytes] = {}
            for i in range(0, len(keys), SLICE):
                for key in keys[i:i + SLICE]:
                    value = source.value(partition, key)
                    if value is not None:
                        values[key] = value
                await asyncio.sleep(0)  # the fold goes on; what it writes is in `touched`
            for key in _drain(touched):  # the end of the copy: no await from here
                value = source.value(partition, key)
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
            return values, source.pending(partition), source.marks(partition), self.clock.now()
        finally:
            source.unwatch(partition)


def _drain(keys: set[bytes]) -> Iterator[bytes]:
    while keys:
        yield keys.pop()

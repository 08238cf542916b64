"""A worker stage on a consumer group of its own: a batch at a time, committed only after
its handler returned (the route and correct stages; docs/invariants.md, 1).

faust acked what an agent never handled: when two fresh workers formed their group, a
worker kept a partition across the rebalance and resumed past records it had fetched
but never handled, and the group's commit moved over them (tests/e2e/test_worker_startup.py
caught it for the sink; faust's commit takes the first run of acked offsets, gap or not).
Here the stage owns its offsets. It runs forever: a Kafka failure starts it over from
the committed offsets with the shared backoff; anything else is a bug and goes up.

``on_assignment`` hears how many of the topic's partitions this member owns after every
rebalance (the correct stage's share of each site's API budget). With ``revoke_wait``,
a rebalance waits for the batch under way (up to that many
seconds) before giving its partitions away; a batch that outlives that commits nothing,
and the partitions' next owner handles it again (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from streams.adapters.kafka.client import FETCH_MAX_WAIT_MS, close_quietly, kafka_transient
from streams.retry import Backoff, retry_forever

log = logging.getLogger("usync.kafka")

#: Handles the records of one fetched batch (``streams.ports.Record``: topic, partition,
#: offset, value); returns once everything they imply is durable.
BatchHandler = Callable[[list[Any]], Awaitable[None]]


#: Told (partitions owned, partitions of the topic) after every assignment, (0, n) on revocation.
AssignmentHook = Callable[[int, int], None]


class _Listener(ConsumerRebalanceListener):
    """Records that the group gave this consumer its partitions (``joined``); with a
    ``wait``, a revocation waits that long for the batch under way; tells ``on_assignment``
    what this member owns."""

    def __init__(self, name: str, busy: asyncio.Lock, wait: float | None, on_assignment: AssignmentHook | None,
                 total: Callable[[], int], joined: Callable[[], None]) -> None:
        self.name, self.busy, self.wait, self.on_assignment, self.total = name, busy, wait, on_assignment, total
        self.joined = joined

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.wait:
            try:
                async with asyncio.timeout(self.wait):
                    async with self.busy:
                        pass
            except TimeoutError:
                log.warning("%s: a batch is still under way after %.0f s; its partitions move on, "
                            "their next owner handles it again", self.name, self.wait)
        if self.on_assignment is not None:
            self.on_assignment(0, self.total())

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined()
        log.info("%s: handling partitions %s", self.name, sorted(tp.partition for tp in assigned))
        if self.on_assignment is not None:
            self.on_assignment(len(assigned), self.total())


class BatchConsumer:
    """``handle`` every batch of ``topic`` as group ``group_id``; ``connected`` while its
    consumer runs, ``joined`` once the group also gave it its partitions (none is an
    answer too: a worker the group has no partition for is ready as well). ``connected``
    alone turned true ~0.5 s after a restart, while the group join took ~9 s more
    (issue 19): readiness reads ``joined``."""

    def __init__(self, name: str, options: dict[str, Any], topic: str, group_id: str, handle: BatchHandler, *,
                 max_records: int, revoke_wait: float | None = None, on_assignment: AssignmentHook | None = None,
                 **settings: Any) -> None:
        self.name = name
        self.options = options
        self.topic = topic
        self.group_id = group_id
        self.handle = handle
        self.max_records = max_records
        self.revoke_wait = revoke_wait
        self.on_assignment = on_assignment
        self.settings = settings
        self.connected = False
        self.joined = False
        self._busy = asyncio.Lock()

    async def run(self) -> None:
        backoff = Backoff()
        await retry_forever(lambda: self._serve(backoff), self.name, transient=kafka_transient, backoff=backoff,
                            on_retry=lambda _exc, _delay: self._disconnected(), logger=log)

    def _disconnected(self) -> None:
        self.connected = self.joined = False

    def _joined(self) -> None:
        self.joined = True

    async def _serve(self, backoff: Backoff) -> None:
        consumer = AIOKafkaConsumer(
            **self.options, group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # a catching-up stage never idles on a long poll
            **self.settings,
        )
        listener = _Listener(self.name, self._busy, self.revoke_wait, self.on_assignment,
                             lambda: len(consumer.partitions_for_topic(self.topic) or ()), self._joined)
        consumer.subscribe([self.topic], listener=listener)
        try:
            await consumer.start()
            self.connected = True
            log.info("%s: consuming %s as group %s", self.name, self.topic, self.group_id)
            while True:
                fetched = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                if fetched:
                    async with self._busy:
                        await self.handle([m for messages in fetched.values() for m in messages])
                        await self._commit(consumer, fetched)
                    backoff.reset()
        finally:
            self._disconnected()
            if self.on_assignment is not None:  # out of the group: its partitions are someone else's soon
                self.on_assignment(0, 1)
            await close_quietly(consumer, self.name)

    async def _commit(self, consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]) -> None:
        try:
            await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in fetched.items()})
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions: the new owner repeats
            log.info("%s: commit after rebalance refused (%s); the batch will be handled again", self.name, exc)

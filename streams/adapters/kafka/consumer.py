"""A worker stage on a consumer group of its own, committing only what its handler finished
(docs/invariants.md, 1): :class:`BatchConsumer` a batch at a time, committed after its
handler returned (the route stage); :class:`WindowConsumer` record by record, each
dispatched as it is fetched and committed per partition up to the lowest offset not yet
done (the correct stage, whose per-site lanes must not wait for one another).

faust acked what an agent never handled: when two fresh workers formed their group, a
worker kept a partition across the rebalance and resumed past records it had fetched
but never handled, and the group's commit moved over them (tests/e2e/test_worker_startup.py
caught it for the sink; faust's commit takes the first run of acked offsets, gap or not).
Here the stage owns its offsets. It runs forever: a Kafka failure starts it over from
the committed offsets with the shared backoff; anything else is a bug and goes up.

``on_assignment`` hears how many of the topic's partitions this member owns after every
rebalance. With ``revoke_wait``, a rebalance waits for the batch under way (up to that many
seconds) before giving its partitions away; a batch that outlives that commits nothing,
and the partitions' next owner handles it again (at-least-once).

The window consumer's commits say more than the offset: the records done above it, in
the commit's metadata (:func:`done_metadata`; Kafka keeps up to 4 KiB of it with every
committed offset, ``offset.metadata.max.bytes``). Records finish out of order (a lane per
site), and after a hand-over the next owner read everything above the committed offset
again: 490 GETs on A for 300 corrections after a kill -9 (issue 29). The next owner reads
the metadata when it is assigned the partition and skips those records, so a correction
whose outcome was written is not read again, whoever owned it; one under way when its
owner died is read again once.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streams.adapters.kafka.client import FETCH_MAX_WAIT_MS, KafkaAccess, close_quietly, kafka_transient
from streams.adapters.kafka.readers import as_read
from streams.retry import Backoff, retry_forever

log = logging.getLogger("usync.kafka")

#: Handles the records of one fetched batch (``streams.ports.Record``: topic, partition,
#: offset, value); returns once everything they imply is durable.
BatchHandler = Callable[[list[Any]], Awaitable[None]]


class Place(NamedTuple):
    """Where a record was read (``streams.ports.Record`` without the value)."""

    topic: str
    partition: int
    offset: int


class ReadBatch(list):  # type: ignore[type-arg]
    """A fetched batch of aiokafka's own records (``records_as_read``: each has ``offset`` and
    ``value``, not ``topic`` or ``partition``), in order; :meth:`where` says where one was read."""

    def __init__(self, fetched: dict[Any, list[Any]]) -> None:
        super().__init__(record for records in fetched.values() for record in records)
        self._ends: list[int] = []
        self._tps: list[Any] = []
        for tp, records in fetched.items():
            self._ends.append((self._ends[-1] if self._ends else 0) + len(records))
            self._tps.append(tp)

    def where(self, index: int) -> Place:
        tp = self._tps[bisect.bisect_right(self._ends, index)]
        return Place(tp.topic, tp.partition, self[index].offset)


#: Told (partitions owned, partitions of the topic) after every assignment, (0, n) on revocation.
AssignmentHook = Callable[[int, int], None]

#: What the window consumer's commit metadata starts with; then the offsets done above
#: the committed one, relative to it, as ranges: ``usync-done:1:0-41,43,57-60``.
DONE_PREFIX = "usync-done:1:"
#: Kafka's default ``offset.metadata.max.bytes`` is 4096: what does not fit is left out
#: (the lowest ranges are kept; the rest is read again by a next owner).
DONE_MAX = 4000


def done_metadata(base: int, done: list[int], limit: int = DONE_MAX) -> str:
    """``done`` (sorted offsets above ``base``) as commit metadata of at most ``limit`` characters."""
    parts: list[str] = []
    size = len(DONE_PREFIX)
    index = 0
    while index < len(done):
        end = index
        while end + 1 < len(done) and done[end + 1] == done[end] + 1:
            end += 1
        first, last = done[index] - base, done[end] - base
        part = str(first) if first == last else f"{first}-{last}"
        if size + len(part) + 1 > limit:
            break
        parts.append(part)
        size += len(part) + 1
        index = end + 1
    return DONE_PREFIX + ",".join(parts) if parts else ""


def done_offsets(metadata: str | None, base: int) -> set[int]:
    """The offsets :func:`done_metadata` wrote (an empty set for any other metadata)."""
    if not metadata or not metadata.startswith(DONE_PREFIX):
        return set()
    found: set[int] = set()
    try:
        for part in filter(None, metadata[len(DONE_PREFIX):].split(",")):
            first, _, last = part.partition("-")
            found.update(range(base + int(first), base + int(last or first) + 1))
    except ValueError:
        log.warning("commit metadata %r is not usync's; nothing is skipped", metadata[:80])
        return set()
    return found


class _Listener(ConsumerRebalanceListener):
    """Records that the group gave this consumer its partitions (``joined``); with a
    ``wait``, a revocation waits that long for the batch under way; tells ``on_assignment``
    what this member owns."""

    def __init__(self, name: str, drained: Callable[[], Awaitable[None]], wait: float | None,
                 on_assignment: AssignmentHook | None, total: Callable[[], int], joined: Callable[[], None],
                 revoked: Callable[[], Awaitable[None]] | None = None,
                 assigned: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.name, self.drained, self.wait, self.on_assignment, self.total = name, drained, wait, on_assignment, total
        self.joined, self.revoked, self.assigned = joined, revoked, assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.wait:
            try:
                async with asyncio.timeout(self.wait):
                    await self.drained()
            except TimeoutError:
                log.warning("%s: records are still under way after %.0f s; their partitions move on, "
                            "their next owner handles them again", self.name, self.wait)
        if self.revoked is not None:
            await self.revoked()
        if self.on_assignment is not None:
            self.on_assignment(0, self.total())

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.assigned is not None:
            await self.assigned(assigned)
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

    def __init__(self, name: str, options: dict[str, Any], topic: str | list[str], group_id: str,
                 handle: BatchHandler, *, max_records: int, revoke_wait: float | None = None,
                 on_assignment: AssignmentHook | None = None, access: KafkaAccess | None = None,
                 records_as_read: bool = False, **settings: Any) -> None:
        """``records_as_read``: ``handle`` gets a :class:`ReadBatch` of aiokafka's own records
        instead of a ConsumerRecord each (1.4 µs of CPU less a record: ``streams.adapters.kafka.readers``)."""
        self.name = name
        self.access = access or KafkaAccess(options)  # a refused start: KafkaRefused, one ERROR
        self.options = options
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.topic = self.topics[0]  # whose partitions on_assignment counts
        self.group_id = group_id
        self.handle = handle
        self.max_records = max_records
        self.revoke_wait = revoke_wait
        self.on_assignment = on_assignment
        self.settings = {**settings, "value_deserializer": as_read} if records_as_read else settings
        self.records_as_read = records_as_read
        self.connected = False
        self.joined = False
        self._busy = asyncio.Lock()

    #: How long the group waits for a member that stopped heartbeating (a kill -9) before
    #: its partitions move; heartbeats every tenth of it.
    session_timeout_ms = 10_000

    async def run(self) -> None:
        backoff = Backoff()
        await retry_forever(lambda: self._serve(backoff), self.name, transient=kafka_transient, backoff=backoff,
                            on_retry=lambda _exc, _delay: self._disconnected(), logger=log)

    def _disconnected(self) -> None:
        self.connected = self.joined = False

    def _joined(self) -> None:
        self.joined = True

    async def _idle(self) -> None:
        async with self._busy:
            pass

    async def _serve(self, backoff: Backoff) -> None:
        consumer = AIOKafkaConsumer(
            **self.options, group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms, heartbeat_interval_ms=self.session_timeout_ms // 10,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # a catching-up stage never idles on a long poll
            **self.settings,
        )
        listener = _Listener(self.name, self._idle, self.revoke_wait, self.on_assignment,
                             lambda: len(consumer.partitions_for_topic(self.topic) or ()), self._joined,
                             lambda: self._revoked(consumer), lambda assigned: self._assigned(consumer, assigned))
        consumer.subscribe(self.topics, listener=listener)
        try:
            await self.access.attempt(consumer.start)
            self.connected = True
            log.info("%s: consuming %s as group %s", self.name, ", ".join(self.topics), self.group_id)
            await self._consume(consumer, backoff)
        finally:
            self._disconnected()
            self._stopped()
            if self.on_assignment is not None:  # out of the group: its partitions are someone else's soon
                self.on_assignment(0, 1)
            await close_quietly(consumer, self.name)

    async def _consume(self, consumer: AIOKafkaConsumer, backoff: Backoff) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
            if fetched:
                async with self._busy:
                    await self.handle(ReadBatch(fetched) if self.records_as_read
                                      else [m for messages in fetched.values() for m in messages])
                    await self._commit(consumer, {tp: messages[-1].offset + 1 for tp, messages in fetched.items()})
                backoff.reset()

    async def _revoked(self, consumer: AIOKafkaConsumer) -> None:
        """After the wait for what is under way, before the partitions go (nothing to do here)."""

    async def _assigned(self, consumer: AIOKafkaConsumer, assigned: Any) -> None:
        """The group gave this member ``assigned``, before it fetches them (nothing to do here)."""

    def _stopped(self) -> None:
        """The consumer is closing (a Kafka failure starts it over from the committed offsets)."""

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[Any, Any]) -> None:
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions: the new owner repeats
            log.info("%s: commit after rebalance refused (%s); the records will be handled again", self.name, exc)


class Offsets:
    """The offsets dispatched and not yet committed, per partition: what may be committed is
    the contiguous prefix of done ones (a record done out of order waits for those before it,
    and is named in the commit's metadata meanwhile: :meth:`commits`)."""

    def __init__(self) -> None:
        self.pending: dict[Any, collections.deque[int]] = {}
        self.done: dict[Any, set[int]] = {}
        self.next: dict[Any, int] = {}  # the offset a commit names now: everything below it is done
        self.changed: set[Any] = set()  # partitions with something done since the last commit
        self.count = 0  # dispatched, not yet committable
        self.undone = 0  # dispatched, not yet done (nor abandoned)

    def started(self, tp: Any, offset: int) -> None:
        self.pending.setdefault(tp, collections.deque()).append(offset)
        self.done.setdefault(tp, set())
        self.next.setdefault(tp, offset)
        self.count += 1
        self.undone += 1

    def finished(self, tp: Any, offset: int) -> None:
        if tp in self.done:  # else cleared meanwhile (a rebalance)
            self.done[tp].add(offset)
            self.changed.add(tp)
            self.undone -= 1

    def abandoned(self, tp: Any, offset: int) -> None:
        """Dropped before it was done (a revocation): not done, no longer awaited."""
        if tp in self.done:
            self.undone -= 1

    def committable(self) -> dict[Any, int]:
        """Per partition that moved: the next offset to read (everything below it is done)."""
        moved: dict[Any, int] = {}
        for tp, pending in self.pending.items():
            done = self.done[tp]
            while pending and pending[0] in done:
                done.discard(offset := pending.popleft())
                self.count -= 1
                moved[tp] = self.next[tp] = offset + 1
        return moved

    def commits(self) -> dict[Any, tuple[int, str]]:
        """(offset, metadata) of every partition that moved or has more done above it since
        the last call: the metadata names the records done above the offset."""
        moved = self.committable()
        out = {}
        for tp in moved.keys() | self.changed:
            if tp in self.next:
                out[tp] = (self.next[tp], done_metadata(self.next[tp], sorted(self.done[tp])))
        self.changed.clear()
        return out

    def clear(self) -> None:
        self.pending.clear()
        self.done.clear()
        self.next.clear()
        self.changed.clear()
        self.count = self.undone = 0


#: Starts handling one record; the future is done once everything it implies is durable.
RecordDispatch = Callable[[Any], "asyncio.Future[Any]"]


class WindowConsumer(BatchConsumer):
    """``dispatch`` every record of ``topic`` as it is fetched, with at most about ``window``
    dispatched and not yet done (above that, fetching pauses on every partition and
    resumes below it); commits each partition up to its lowest offset not yet done, at
    least every ``commit_every`` seconds. On a revocation it waits up to ``revoke_wait``
    for what is under way, commits what is done, and calls ``cancel`` for the rest (the
    partitions' next owner handles it again). A dispatched record that fails (a bug: the
    handler dead-letters everything else) raises out of ``run``."""

    def __init__(self, name: str, options: dict[str, Any], topic: str, group_id: str, dispatch: RecordDispatch,
                 cancel: Callable[[], None], *, window: int, max_records: int, commit_every: float = 0.5,
                 revoke_wait: float | None = None, on_assignment: AssignmentHook | None = None,
                 access: KafkaAccess | None = None, shed: Callable[[], None] | None = None,
                 session_timeout_ms: int | None = None, **settings: Any) -> None:
        super().__init__(name, options, topic, group_id, self._never, max_records=max_records,
                         revoke_wait=revoke_wait, on_assignment=on_assignment, access=access, **settings)
        self.dispatch, self.cancel, self.window, self.commit_every = dispatch, cancel, window, commit_every
        self.shed = shed
        if session_timeout_ms is not None:
            self.session_timeout_ms = session_timeout_ms
        self.offsets = Offsets()
        #: Offsets above each partition's committed one that an earlier owner finished.
        self.skip: dict[Any, set[int]] = {}
        self.skipped = 0
        self._moved = asyncio.Event()
        self._failed: BaseException | None = None

    @staticmethod
    async def _never(records: list[Any]) -> None:
        raise AssertionError("WindowConsumer dispatches records one by one")

    async def _consume(self, consumer: AIOKafkaConsumer, backoff: Backoff) -> None:
        while True:
            if self.offsets.count >= self.window:
                consumer.pause(*consumer.assignment())
            elif consumer.paused():
                consumer.resume(*consumer.paused())
            fetched = await consumer.getmany(timeout_ms=int(self.commit_every * 1000), max_records=self.max_records)
            for tp, messages in fetched.items():
                skip = self.skip.get(tp, ())
                for message in messages:
                    self.offsets.started(tp, message.offset)
                    if message.offset in skip:  # its earlier owner finished it
                        self.offsets.finished(tp, message.offset)
                        self.skipped += 1
                        continue
                    self.dispatch(message).add_done_callback(
                        lambda future, tp=tp, offset=message.offset: self._done(future, tp, offset))
            if self._failed is not None:
                raise self._failed
            await self._commit(consumer, self.offsets.commits())
            if fetched:
                backoff.reset()

    def _done(self, future: asyncio.Future, tp: Any, offset: int) -> None:
        if future.cancelled():
            self.offsets.abandoned(tp, offset)
            self._moved.set()
            return
        if future.exception() is not None:
            self._failed = self._failed or future.exception()
            return
        self.offsets.finished(tp, offset)
        self._moved.set()

    async def _idle(self) -> None:
        """A revocation: what waits unstarted is dropped at once (the next owner reads it for
        the first time); only what is under way is waited for."""
        if self.shed is not None:
            self.shed()
        while self.offsets.undone:
            self._moved.clear()
            await self._moved.wait()

    async def _revoked(self, consumer: AIOKafkaConsumer) -> None:
        await self._commit(consumer, self.offsets.commits())
        self._stopped()

    async def _assigned(self, consumer: AIOKafkaConsumer, assigned: Any) -> None:
        """Read what the partitions' earlier owners finished above their commits. Best
        effort: without it those records are handled again (their live reads make that
        harmless)."""
        self.skip = {}
        try:
            committed = await consumer._coordinator.fetch_committed_offsets(list(assigned))  # noqa: SLF001
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            log.warning("%s: could not read the commits' metadata (%s); records done above them are read again",
                        self.name, exc)
            return
        for tp, meta in committed.items():
            done = done_offsets(meta.metadata, meta.offset) if meta.offset >= 0 else set()
            if done:
                self.skip[tp] = done
        if self.skip:
            log.info("%s: %d records above the committed offsets were finished by an earlier owner; skipping them",
                     self.name, sum(len(done) for done in self.skip.values()))

    def _stopped(self) -> None:
        self.cancel()
        self.offsets.clear()

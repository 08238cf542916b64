"""The username table on faust Tables: a thin MutableMapping adapter for the pure fold.

The fold agent folds a *batch* (``stream.take_events``), so its table writes happen
outside faust's per-event iteration, where ``Table.partition_for_key`` (and the
RocksDB store's ``_set``/``_get``) read faust's *current event* to find the partition.
Every key of a link lives in that link's partition (the repartition topic is keyed by
link name), so for each link group of a batch we declare one event of that group
current (:func:`link_partition`). :class:`LinkTable` also answers
``partition_for_key`` from our own ContextVar first, so the changelog partition never
depends on faust internals we do not set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Generic, NamedTuple, TypeVar

import faust
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event  # the ContextVar faust sets per event
from faust.types import TP

from streams.adapters.faust.index import RowIndex
from streams.adapters.faust.rowcodec import ROWS
from streams.adapters.faust.store import LinkMemoryStore
from streams.adapters.kafka.client import kafka_transient
from streams.adapters.kafka.producers import ReplaceableProducer
from streams.core import Pending, Row, TableState
from streams.retry import retry_forever

log = logging.getLogger("usync.tables")

BATCH_BYTES = 1024 * 1024

_partition: ContextVar[int | None] = ContextVar("usync_link_partition", default=None)

V = TypeVar("V")


class LinkTable(faust.Table):
    """A faust Table whose writes go to the partition of the link being folded, and
    whose memory store keeps a partition per link, not per key (``streams.adapters.faust.store``).

    It also tells :func:`update_index` what a recovery did: which partitions are active
    after it (``active_partitions``), and the stored value before the recovery of every key
    it re-applied to the partitions the index keeps (:meth:`track_recovered`)."""

    active_partitions: set[int] | None = None  # None until a recovery completed
    _tracked: frozenset[int] = frozenset()
    _before: dict[bytes, bytes | None] | None = None

    def track_recovered(self, partitions: set[int]) -> None:
        """From now on note the value each changelog record of ``partitions`` replaces."""
        self._tracked, self._before = frozenset(partitions), {}

    def take_recovered(self) -> dict[bytes, bytes | None]:
        """Key -> its value before the recovery, of every key recovery wrote since :meth:`track_recovered`."""
        before, self._before = self._before or {}, {}
        return before

    def apply_changelog_batch(self, batch: Any) -> None:
        tracked, before = self._tracked, self._before
        if tracked and before is not None:
            for event in batch:
                partition = event.message.partition
                if partition in tracked and event.key not in before:
                    before[event.key] = stored_value(self, partition, event.key)
        super().apply_changelog_batch(batch)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        self.active_partitions = {tp.partition for tp in active_tps}
        await super().on_recovery_completed(active_tps, standby_tps)

    def _new_store_by_url(self, url: Any) -> Any:
        if str(url).partition(":")[0] != "memory":
            return super()._new_store_by_url(url)
        return LinkMemoryStore(url, self.app, self, table_name=self.name, key_type=self.key_type,
                               key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                               value_type=self.value_type, loop=self.loop, options=self.options)

    def partition_for_key(self, key: Any) -> int | None:
        partition = _partition.get()
        if partition is not None:
            return partition
        return super().partition_for_key(key)


@contextlib.contextmanager
def link_partition(event: faust.types.EventT) -> Iterator[None]:
    """Fold into the partition ``event`` came from (one link's whole state)."""
    token_p = _partition.set(event.message.partition)
    token_e = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token_e)
        _partition.reset(token_p)


class Codec(Generic[V]):
    def __init__(self, type_: Any) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(type_).decode

    def decode_at(self, key: str, raw: bytes) -> V:
        """The value stored under ``key`` (a row's key holds half of it: :class:`RowCodec`)."""
        return self.decode(raw)


class RowCodec(Codec[Row]):
    """Rows in the compact storage format (``streams.adapters.faust.rowcodec``: 103 B for a
    converged row, 260 B as a full array); rows stored before still decode."""

    def __init__(self) -> None:
        self.encode = ROWS.encode
        self.decode_at = ROWS.decode  # type: ignore[method-assign]


class TableMapping(MutableMapping[str, V]):
    """str keys, msgspec-encoded values, over a faust table of bytes."""

    def __init__(self, table: faust.Table, codec: Codec[V]) -> None:
        self.table = table
        self.encode = codec.encode
        self.decode = codec.decode_at

    def __getitem__(self, key: str) -> V:
        raw = self.table.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return self.decode(key, raw)

    def get(self, key: str, default: Any = None) -> Any:  # hot path: one lookup, no exception
        raw = self.table.get(key.encode())
        return default if raw is None else self.decode(key, raw)

    def __setitem__(self, key: str, value: V) -> None:
        self.table[key.encode()] = self.encode(value)

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def pop(self, key: str, *default: Any) -> Any:
        kb = key.encode()
        raw = self.table.get(kb)
        if raw is None:
            if default:
                return default[0]
            raise KeyError(key)
        del self.table[kb]
        return self.decode(key, raw)

    def __iter__(self) -> Iterator[str]:
        for key in list(self.table.keys()):
            yield key.decode() if isinstance(key, bytes) else key

    def __len__(self) -> int:
        return len(self.table)


ROW = RowCodec()
PENDING = Codec[Pending](Pending)
MARK = Codec[int](int)


def decode_row(row_key: bytes, value: bytes) -> Row:
    return ROWS.decode(row_key.decode(), value)


class Tables(NamedTuple):
    """The worker's tables: rows, the identity index derived from them, parked events, and
    each (link, side)'s listing mark (a few bytes per link)."""

    rows: faust.Table
    index: RowIndex
    pending: faust.Table
    marks: faust.Table


def define_tables(app: faust.App, partitions: int, topic_configs: Mapping[str, str] | None = None) -> Tables:
    """The worker's tables (rows, pending, marks) and the identity index derived from the rows,
    rebuilt after every table recovery; ``topic_configs`` goes to each changelog topic faust
    creates (``min.insync.replicas`` on a cluster; the replication factor is the app's)."""
    def table(name: str) -> faust.Table:
        # bytes -> faust's "raw" codec for the store *and* the changelog (recovery decodes with it)
        return app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes,
                         extra_topic_configs=dict(topic_configs or {}))

    rows, index = table("rows"), RowIndex(decode_row, link_partitioner(partitions))

    @rows.on_recover
    async def rebuild_index() -> None:
        await update_index(index, rows)

    return Tables(rows, index, table("pending"), table("marks"))


def link_partitioner(partitions: int) -> Callable[[str], int]:
    """The partition of a link's rows: that of its by-link records, which the route stage
    keys by link name (aiokafka's default partitioner: murmur2 of the key, as Kafka's)."""
    found: dict[str, int] = {}

    def partition_of(link: str) -> int:
        partition = found.get(link)
        if partition is None:
            partition = found[link] = (murmur2(link.encode()) & 0x7FFFFFFF) % partitions
        return partition

    return partition_of


REBUILD_CHUNK = 1000  # rows indexed between two yields to the loop (~7-9 ms at 7-9 µs a row)
SCAN_CHUNK = 20_000  # keys sorted by partition between two yields (~5 ms)


async def update_index(index: RowIndex, rows: faust.Table) -> None:
    """The index after a recovery (faust calls this before the fold resumes): what moved.

    Partitions no longer active here are dropped from it (their slots as one object); the
    rows of partitions that became active are indexed (rows faust's standby reader or the
    recovery wrote, which the fold's writes never went through); of the partitions kept,
    only the rows that the recovery changed are indexed again (faust re-applies this worker's
    own changelog records: their values are the stored ones, and cost nothing more). The
    first recovery of a process, or a table that is not a :class:`LinkTable`, indexes every
    row (:func:`rebuild`). ``bench/bench_rebalance.py`` prints the cost against rows moved."""
    active: set[int] | None = getattr(rows, "active_partitions", None)
    current = index.current
    if active is None or current is None:
        await rebuild(index, rows)
    else:
        started = time.monotonic()
        gained, lost = active - current, index.partitions() - active
        dropped = index.drop_partitions(gained | lost)  # a gained partition's old entries are stale
        added = await _index_partitions(index, rows, gained)
        changed = await _index_recovered(index, rows, rows.take_recovered(), active & current)
        log.info("Identity index: partitions %s gained (%d rows indexed), %s lost (%d entries dropped), "
                 "%d rows changed by the recovery, in %.2f s", sorted(gained), added, sorted(lost), dropped,
                 changed, time.monotonic() - started)
    index.current = active if active is not None else set()
    if isinstance(rows, LinkTable):
        rows.track_recovered(index.current)


async def rebuild(index: RowIndex, rows: faust.Table) -> None:
    """Index every row the store holds (a process's first recovery)."""
    started = time.monotonic()
    index.reset()
    count = await _index_partitions(index, rows, None)
    log.info("Identity index: %d rows indexed in %.1f s", count, time.monotonic() - started)


async def _index_partitions(index: RowIndex, rows: faust.Table, partitions: set[int] | None) -> int:
    """Index the stored rows of ``partitions`` (None: every row); answer how many."""
    if partitions is not None and not partitions:
        return 0
    memory = memory_dict(rows)
    if memory is None:  # RocksDB: a db per partition, its iterators read a consistent view
        store = rows.data
        sources: list[tuple[int | None, Iterator[tuple[bytes, bytes]]]] = \
            [(None, iter(store.items()))] if partitions is None else \
            [(p, store._visible_items(store._db_for_partition(p))) for p in sorted(partitions)]
    else:  # the standby reader may write meanwhile: a snapshot of the keys (8 B each)
        by_partition = await _keys_by_partition(index, memory, partitions)
        sources = [(p, ((key, value) for key in keys if (value := memory.get(key)) is not None))
                   for p, keys in by_partition.items()]
        for p, keys in by_partition.items():
            index.add((), len(keys), p)  # room made once
    count = 0
    for _partition, pairs in sources:
        while chunk := list(itertools.islice(pairs, REBUILD_CHUNK)):
            index.add(chunk)
            count += len(chunk)
            await asyncio.sleep(0)
    return count


async def _keys_by_partition(index: RowIndex, memory: MutableMapping[bytes, bytes],
                             partitions: set[int] | None) -> dict[int, list[bytes]]:
    """The memory store's keys of ``partitions`` (None: all), by partition: one pass over the
    keys (~0.2 µs a key), in slices; the rows are then indexed from these alone."""
    keys, found = list(memory), {}
    links: dict[bytes, int] = {}
    for start in range(0, len(keys), SCAN_CHUNK):
        for key in keys[start:start + SCAN_CHUNK]:
            link = key[:key.find(b":")]
            partition = links.get(link)
            if partition is None:
                partition = links[link] = index.partition_of(link.decode(errors="replace"))
            if partitions is None or partition in partitions:
                found.setdefault(partition, []).append(key)
        await asyncio.sleep(0)
    return found


async def _index_recovered(index: RowIndex, rows: faust.Table, before: dict[bytes, bytes | None],
                           kept: set[int]) -> int:
    """Index again the rows of ``kept`` partitions whose stored value the recovery changed
    (a writer other than this worker's fold: a member that was dropped from the group and
    went on writing); answer how many."""
    memory, changed = memory_dict(rows), []
    for n, (key, old) in enumerate(before.items()):
        partition = index.partition_of(key[:key.find(b":")].decode(errors="replace"))
        if partition not in kept:
            continue
        new = stored_value(rows, partition, key)
        if new != old:
            if old is not None:
                index.unpoint(key, old)
            if new is not None:
                changed.append((key, new))
        if n % REBUILD_CHUNK == REBUILD_CHUNK - 1:
            await asyncio.sleep(0)
    if memory is not None:
        index.share([key for key, _ in changed], memory)  # under the store's own key objects
    else:
        index.add(changed)
    return len(changed)


def stored_value(rows: faust.Table, partition: int, key: bytes) -> bytes | None:
    """The value ``rows`` holds under ``key`` in ``partition`` (no faust event needed)."""
    memory = memory_dict(rows)
    if memory is not None:
        return memory.get(key)
    return rows.data._db_for_partition(partition).get(key)


def memory_dict(table: faust.Table) -> MutableMapping[bytes, bytes] | None:
    """The dict behind faust's memory store (None for RocksDB): where row keys can be shared."""
    store = table.data
    return store.data if isinstance(store, MemoryStore) else None


def table_state(rows: faust.Table, index: RowIndex, pending: faust.Table, marks: faust.Table) -> TableState:
    return TableState(rows=TableMapping(rows, ROW), index=index, pending=TableMapping(pending, PENDING),
                      marks=TableMapping(marks, MARK))


_GONE: Any = object()


class BufferedMapping(TableMapping[V]):
    """Write-behind over a TableMapping for one fold call: each key reaches the faust table
    (and its changelog) once per batch, however often the batch rewrote it. A busy
    user's row is rewritten by every event; without this, every rewrite would be a
    changelog record and the producer buffer, not the fold, would set the pace."""

    def __init__(self, table: faust.Table, codec: Codec[V]) -> None:
        super().__init__(table, codec)
        self.dirty: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        value = self.dirty.get(key, None)
        if value is None:
            return super().get(key, default)
        return default if value is _GONE else value

    def __getitem__(self, key: str) -> V:
        value = self.get(key, _GONE)
        if value is _GONE:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: V) -> None:
        self.dirty[key] = value

    def __delitem__(self, key: str) -> None:
        if self.get(key, _GONE) is _GONE:
            raise KeyError(key)
        self.dirty[key] = _GONE

    def pop(self, key: str, *default: Any) -> Any:
        value = self.get(key, _GONE)
        if value is _GONE:
            if default:
                return default[0]
            raise KeyError(key)
        self.dirty[key] = _GONE
        return value

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for key, value in self.dirty.items():
            seen.add(key)
            if value is not _GONE:
                yield key
        for key in super().__iter__():
            if key not in seen:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The batch's final values, encoded (None: deleted); the buffer starts over."""
        encode = self.encode
        changes = {key.encode(): None if value is _GONE else encode(value) for key, value in self.dirty.items()}
        self.dirty.clear()
        return changes


def buffered_state(rows: faust.Table, index: RowIndex, pending: faust.Table, marks: faust.Table) -> TableState:
    return TableState(rows=BufferedMapping(rows, ROW), index=index, pending=BufferedMapping(pending, PENDING),
                      marks=BufferedMapping(marks, MARK))


class ChangelogWriter:
    """Writes one fold batch's changes to a table's store and, in bulk, to its changelog.

    ``table[key] = value`` would send one changelog record through faust's producer
    buffer per key, which costs more than the fold itself; here the store is written
    directly and the changelog records go out as aiokafka batches (one per partition
    and megabyte) on a producer of our own. The fold agent awaits :meth:`send`'s acks
    before it asks faust for the next batch, so a source offset is never committed
    ahead of the table state it produced (docs/invariants.md, 1).
    """

    def __init__(self, options: dict[str, Any], compression: str | None = None) -> None:
        self._producer = ReplaceableProducer(options, "changelog", max_batch_size=BATCH_BYTES,
                                             max_request_size=4 * BATCH_BYTES, compression_type=compression)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def apply(self, table: faust.Table, changes: dict[bytes, bytes | None]) -> None:
        """Write the store (inside :func:`link_partition`: the RocksDB store picks its partition db from it)."""
        store = table.data
        for key, value in changes.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value

    async def send(self, table: faust.Table, partition: int, changes: dict[bytes, bytes | None]) -> None:
        """Write ``changes`` to the changelog partition; retry until Kafka acknowledged them all."""
        topic = table.changelog_topic.get_topic_name()

        async def attempt() -> int | None:  # re-sending the same values is harmless: the changelog is compacted
            producer = await self._producer.current()
            try:
                return await self._send_batches(producer, topic, partition, changes)
            except KafkaError as exc:
                await self._producer.replace(producer, exc)
                raise

        last = await retry_forever(attempt, f"changelog {topic}[{partition}]", transient=kafka_transient)
        if last is not None:
            table.data.set_persisted_offset(TP(topic, partition), last)

    async def _send_batches(self, producer: AIOKafkaProducer, topic: str, partition: int,
                            changes: dict[bytes, bytes | None]) -> int | None:
        acks: list[tuple[asyncio.Future, int]] = []
        batch, count = producer.create_batch(), 0
        for key, value in changes.items():
            if batch.append(key=key, value=value, timestamp=None) is None:
                acks.append((await producer.send_batch(batch, topic, partition=partition), count))
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        if count:
            acks.append((await producer.send_batch(batch, topic, partition=partition), count))
        last = None
        for ack, n in acks:
            last = (await ack).offset + n - 1
        return last


class Changes(NamedTuple):
    """One fold group's changes: rows, pending entries and marks encoded (None: deleted), and
    the row keys the index now points to (the index is merged already: it is not stored)."""

    rows: dict[bytes, bytes | None]
    indexed: list[bytes]
    pending: dict[bytes, bytes | None]
    marks: dict[bytes, bytes | None]


def take_changes(state: TableState) -> Changes:
    """The buffered state's changes; the buffers start over."""
    return Changes(state.rows.take_changes(), state.index.take_changes(),  # type: ignore[attr-defined]
                   state.pending.take_changes(), state.marks.take_changes())  # type: ignore[attr-defined]


def write_changes(writer: ChangelogWriter, taken: Changes, tables: Tables, partition: int) -> list[Awaitable[None]]:
    """Apply taken changes to the stores (inside :func:`link_partition`); return their changelog sends."""
    rows, index, pending, marks = tables
    sends: list[Awaitable[None]] = []
    for changes, table in ((taken.rows, rows), (taken.pending, pending), (taken.marks, marks)):
        if changes:
            writer.apply(table, changes)
            sends.append(writer.send(table, partition, changes))
    index.share(taken.indexed, memory_dict(rows))
    return sends


class FaustLinkGroup:
    """One link's events of a fold batch (``streams.ports.LinkGroup``): all from one partition."""

    __slots__ = ("link", "values", "places", "event")

    def __init__(self, link: str, events: list[Any]) -> None:
        self.link = link
        self.values = [event.value for event in events]
        self.places = [(event.message.topic, event.message.partition, event.message.offset) for event in events]
        self.event = events[0]


def link_groups(batch: list[Any]) -> list[FaustLinkGroup]:
    """A faust batch by link, in order of first appearance."""
    by_link: dict[bytes, list[Any]] = {}
    for event in batch:
        by_link.setdefault(event.key or b"", []).append(event)  # a keyless stray folds as no link
    return [FaustLinkGroup(key.decode(errors="replace"), events) for key, events in by_link.items()]


class FaustFoldTables:
    """The fold's tables (``streams.ports.FoldTables``) over faust Tables and a changelog writer."""

    def __init__(self, tables: Tables, options: dict[str, Any], compression: str | None = None) -> None:
        self.tables = tables
        self.state = buffered_state(*tables)
        self.writer = ChangelogWriter(options, compression)
        self.watching: dict[int, set[bytes]] = {}  # partition -> row keys written since a checkpoint's copy began

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    def partition(self, group: FaustLinkGroup) -> contextlib.AbstractContextManager[None]:
        return link_partition(group.event)

    def take_changes(self) -> Changes:
        return take_changes(self.state)

    def write(self, group: FaustLinkGroup, changes: Changes) -> list[Awaitable[None]]:
        partition = group.event.message.partition
        watched = self.watching.get(partition)
        if watched is not None:
            watched.update(changes.rows)
        return write_changes(self.writer, changes, self.tables, partition)


class FaustCheckpointSource:
    """The tables as the checkpoint stage reads them (``streams.stages.checkpoint.CheckpointSource``).

    A link's rows are all in the by-link partition of its name (the producers' default
    partitioner, as the route stage writes), so a key's partition is its link's."""

    def __init__(self, app: faust.App, fold_tables: FaustFoldTables, by_link: str, partitions: int) -> None:
        self.app, self.fold_tables, self.by_link, self.partitions = app, fold_tables, by_link, partitions
        self._of_link = link_partitioner(partitions)

    def partition_of(self, key: bytes) -> int:
        return self._of_link(key.partition(b":")[0].decode())

    def active(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.by_link}

    def keys(self, partition: int) -> list[bytes]:
        rows = self.fold_tables.tables.rows
        memory = memory_dict(rows)
        if memory is not None:
            return list(memory)  # every partition's: value() answers only this one's
        return list(rows.data._db_for_partition(partition).keys())  # noqa: SLF001 (one RocksDB per partition)

    def value(self, partition: int, key: bytes) -> bytes | None:
        if self.partition_of(key) != partition:
            return None
        return self.fold_tables.tables.rows.data.get(key)

    def watch(self, partition: int) -> set[bytes]:
        return self.fold_tables.watching.setdefault(partition, set())

    def unwatch(self, partition: int) -> None:
        self.fold_tables.watching.pop(partition, None)

    def _entries(self, table: faust.Table, partition: int) -> Iterator[tuple[bytes, bytes]]:
        for key in list(table.data.keys()):
            if self.partition_of(key) == partition and (value := table.data.get(key)) is not None:
                yield key, value

    def pending(self, partition: int) -> list[Pending]:
        return [PENDING.decode(value) for _key, value in self._entries(self.fold_tables.tables.pending, partition)]

    def marks(self, partition: int) -> dict[str, int]:
        return {key.decode(): MARK.decode(value) for key, value in self._entries(self.fold_tables.tables.marks,
                                                                                 partition)}

    def decode(self, key: bytes, value: bytes) -> Row:
        return decode_row(key, value)

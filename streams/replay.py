"""``usync replay``: rebuild the table from the permanent topics alone, with no network.

Starts from the newest table checkpoint of every partition (the checkpoints topic;
``until``: the newest as of that instant), then folds the events topic from the lowest
offset those checkpoints cover up to the end offsets taken at start (``until``: the
first offset written after that instant), with manual assignment (no consumer group:
replay never moves a worker's offsets) and the same pure fold as the worker. Without a
checkpoint of every partition, or with ``from_beginning``, it folds everything;
``since`` folds from the offsets for a time and no checkpoint (a partial table).

``processes`` splits the events topic's partitions between processes: a link's two sides
come from their own offerings' partitions and set only their own fields
(``streams.core.checkpoint``), so each process folds the sides its partitions feed and
the parent joins the halves of every row.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import msgspec
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.adapters.kafka import checkpoints
from streams.adapters.kafka.readers import partitions_of, reader
from streams.contract.config import Config
from streams.contract.schema import decode_envelope, event_key
from streams.core import Pending, Row, TableState, as_dict, compile_routes, drift_by_link, fold_many
from streams.core.checkpoint import load, merge, project

FETCH = dict(request_timeout_ms=40_000, metadata_max_age_ms=300_000, max_partition_fetch_bytes=8 * 1024 * 1024,
             fetch_max_bytes=64 * 1024 * 1024)


@dataclass
class Replayed:
    """What a replay folded: the table, the envelopes folded, the seconds it took, and
    where it started (``checkpoint``: the instant of the oldest checkpoint it started
    from, None from the beginning or ``since``; ``checkpoint_rows``: rows loaded from them)."""

    state: TableState
    folded: int
    seconds: float
    checkpoint: datetime | None = None
    checkpoint_rows: int = 0
    processes: int = 1
    start: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)


async def replay(config: Config, since: datetime | None = None, console: Console | None = None, *,
                 until: datetime | None = None, from_beginning: bool = False, processes: int = 1,
                 batch: int = 10_000) -> Replayed:
    """Fold the permanent topics (see the module's docstring)."""
    console = console or Console(stderr=True)
    began = time.perf_counter()
    state, start, end, oldest, rows = await _plan(config, since, until, from_beginning)
    total = sum(end[p] - start[p] for p in end)
    if processes > 1:
        folded = await _fold_apart(config, state, start, end, processes, console, total, batch)
        state = folded.state
        count = folded.folded
    else:
        with _progress(console, total) as advance:
            count = await fold_partitions(config, state, start, end, advance, batch)
    return Replayed(state=state, folded=count, seconds=time.perf_counter() - began, checkpoint=oldest,
                    checkpoint_rows=rows, processes=processes, start=start, end=end)


async def _plan(config: Config, since: datetime | None, until: datetime | None, from_beginning: bool,
                ) -> tuple[TableState, dict[int, int], dict[int, int], datetime | None, int]:
    """The state to start from and, per events partition, the offsets to fold between."""
    topic = config.kafka.events_topic
    async with reader(config, **FETCH) as consumer:
        partitions = await partitions_of(consumer, topic)
        if not partitions:
            raise SystemExit(f"usync replay: topic {topic} does not exist")
        latest = await consumer.end_offsets(partitions)
        end = dict(latest)
        if until is not None:
            found = await consumer.offsets_for_times({tp: int(until.timestamp() * 1000) + 1 for tp in partitions})
            end = {tp: found[tp].offset if found.get(tp) else latest[tp] for tp in partitions}
        start = await consumer.beginning_offsets(partitions)
        if since is not None:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
            start = {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in partitions}
        state, oldest, rows = TableState(), None, 0
        if since is None and not from_beginning:
            picked = await _checkpoints(config, consumer, until)
            if picked:
                rows = sum(load(state, found.parts, found.manifest.marks) for found in picked.values())
                oldest = min(found.manifest.instant for found in picked.values())
                for tp in partitions:  # every fact before the lowest cover is in the checkpoints
                    covered = min(found.manifest.covers.get(tp.partition, 0) for found in picked.values())
                    start[tp] = max(start[tp], min(covered, end[tp]))
    return (state, {tp.partition: start[tp] for tp in partitions}, {tp.partition: end[tp] for tp in partitions},
            oldest, rows)


async def _checkpoints(config: Config, consumer: Any, until: datetime | None) -> dict[int, checkpoints.Found]:
    """Every table partition's newest checkpoint as of ``until``; empty unless all have one."""
    partitions = await partitions_of(consumer, config.kafka.checkpoints_topic)
    found = await checkpoints.find(consumer, config.kafka.checkpoints_topic, partitions, until)
    return found if partitions and len(found) == len(partitions) else {}


class _Progress:
    def __init__(self, progress: Progress, task: Any) -> None:
        self.progress, self.task, self.done, self.began = progress, task, 0, time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.began
        self.progress.update(self.task, completed=self.done, rate=self.done / elapsed if elapsed else 0.0)


class _progress:
    def __init__(self, console: Console, total: int) -> None:
        self.bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]:>10,.0f} events/s"), TimeElapsedColumn(),
                            console=console, transient=False)
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        self.bar.__enter__()
        return _Progress(self.bar, self.bar.add_task("replay", total=self.total, rate=0.0))

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


async def fold_partitions(config: Config, state: TableState, start: dict[int, int], end: dict[int, int],
                          advance: Callable[[int], None], batch: int = 10_000) -> int:
    """Fold the events topic's ``start``..``end`` offsets of the partitions in ``end`` into ``state``."""
    topic = config.kafka.events_topic
    routes = compile_routes(config.links)
    folded = 0
    remaining = {TopicPartition(topic, p) for p in end if end[p] > start[p]}
    if not remaining:
        return 0
    async with reader(config, records_as_read=True, **FETCH) as consumer:
        consumer.assign(sorted(remaining, key=lambda tp: tp.partition))
        for tp in remaining:
            consumer.seek(tp, start[tp.partition])
        decode = decode_envelope
        while remaining:
            records = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
            for tp, messages in records.items():
                stop = end[tp.partition]
                if messages[-1].offset >= stop:
                    messages = [m for m in messages if m.offset < stop]
                fold_many(state, routes, [decode(m.value) for m in messages])
                folded += len(messages)
                advance(len(messages))
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp.partition]:
                    remaining.discard(tp)
                    consumer.pause(tp)
    return folded


# -- on several processes ------------------------------------------------------------------


class _Encoded(msgspec.Struct, array_like=True):
    rows: list[Row]
    index: dict[str, str]
    pending: dict[str, Pending]
    marks: dict[str, int]


def _encode(state: TableState) -> bytes:
    return msgspec.msgpack.encode(_Encoded(list(state.rows.values()), dict(state.index), dict(state.pending),
                                           dict(state.marks)))


def _decode(raw: bytes) -> TableState:
    encoded = msgspec.msgpack.decode(raw, type=_Encoded)
    return TableState(rows={f"{row.link}:{row.user_username}": row for row in encoded.rows}, index=encoded.index,
                      pending=encoded.pending, marks=encoded.marks)


def owner_of(config: Config, partitions: int) -> Callable[[str, str], int]:
    """(link, side) -> the events partition its offering's facts are on (the producers' default partitioner)."""
    by_name = {link.name: link for link in config.links}
    partitioner = DefaultPartitioner()
    every = list(range(partitions))

    def owner(link: str, side: str) -> int:
        found = by_name.get(link)
        if found is None:
            return 0
        endpoint = found.source if side == "source" else found.target
        return partitioner(event_key(endpoint.site, endpoint.offering).encode(), every, every)
    return owner


def shares_of(start: dict[int, int], end: dict[int, int], processes: int) -> list[list[int]]:
    """The partitions in at most ``processes`` shares of about as many envelopes each (largest
    first, each to the share with the fewest so far). Partitions with nothing to fold go to
    the first share, which this process folds: a fork for them would only copy their table."""
    shares: list[list[int]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for partition in sorted((p for p in end if end[p] > start[p]), key=lambda p: (start[p] - end[p], p)):
        least = loads.index(min(loads))
        shares[least].append(partition)
        loads[least] += end[partition] - start[partition]
    found = [share for share in shares if share] or [[]]
    found[0].extend(p for p in end if end[p] <= start[p])
    return [sorted(share) for share in found]


_CHILD: dict[str, Any] = {}  # what a forked child folds (set in the parent before the fork)


def _own(config: Config, state: TableState, mine: list[int], partitions: int) -> TableState:
    """The part of ``state`` of the sides that the partitions ``mine`` feed."""
    owner, wanted = owner_of(config, partitions), set(mine)
    return project(state, lambda link, side: owner(link, side) in wanted)


def _child(mine: list[int], counter: Any, conn: Any) -> None:
    config, state, start, end = _CHILD["config"], _CHILD["state"], _CHILD["start"], _CHILD["end"]
    own = _own(config, state, mine, len(end))

    def advance(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    asyncio.run(fold_partitions(config, own, {p: start[p] for p in mine}, {p: end[p] for p in mine}, advance))
    conn.send_bytes(_encode(own))
    conn.close()


async def _fold_apart(config: Config, state: TableState, start: dict[int, int], end: dict[int, int], processes: int,
                      console: Console, total: int, batch: int) -> Replayed:
    """Fold the partitions in ``processes`` processes, each its share of the sides; join them.

    This process folds the first share itself while forked ones fold the others: it would
    only wait otherwise, and its own share's table needs no copy."""
    first, *others = shares_of(start, end, processes)
    _CHILD.update(config=config, state=state, start=start, end=end)
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    children = []
    for share in others:  # forked before this process folds anything: each child copies only the start
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(share, counter, send), daemon=True)
        child.start()
        send.close()
        children.append((child, receive))
    _CHILD.clear()
    loop = asyncio.get_running_loop()
    theirs = asyncio.gather(*(loop.run_in_executor(None, receive.recv_bytes) for _child_, receive in children))
    own = _own(config, state, first, len(end))
    with _progress(console, total) as advance:
        mine = 0

        def folded(n: int) -> None:
            nonlocal mine
            mine += n
            advance(mine + counter.value - advance.done)  # type: ignore[attr-defined]

        await fold_partitions(config, own, {p: start[p] for p in first}, {p: end[p] for p in first}, folded, batch)
        while not theirs.done():
            await asyncio.wait({theirs}, timeout=0.2)
            folded(0)
    for (child, _receive), raw in zip(children, await theirs):
        merge(own, _decode(raw))
        child.join()
        if child.exitcode:
            raise RuntimeError(f"usync replay: a folding process exited with {child.exitcode}")
    return Replayed(state=own, folded=mine + counter.value, seconds=0.0, processes=processes)


def drift_table(config: Config, state: TableState) -> Table:
    table = Table(title="drift per link")
    for column in ("link", "rows", "drift", "examples"):
        table.add_column(column)
    for name, found in drift_by_link(state, config.links).items():  # one pass over the table
        examples = ", ".join(f"{r.user_username}: {r.a_username!r} -> {r.b_username!r}" for r in found.drift[:3])
        table.add_row(name, str(found.rows), str(len(found.drift)), examples)
    return table


def compare(local: dict[str, Any], url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> list[str]:
    """Differences between the replayed table and a live worker's (empty: identical);
    ``headers``: the operator token (``Config.web_headers``)."""
    live = msgspec.json.decode(httpx.get(url, timeout=timeout, headers=headers).raise_for_status().content)
    differences = []
    for part in ("rows", "index", "pending", "marks"):
        mine, theirs = local.get(part, {}), live.get(part, {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                differences.append(f"{part}[{key}]: replay={mine.get(key)!r} live={theirs.get(key)!r}")
    return differences


__all__ = ["Replayed", "as_dict", "compare", "drift_table", "fold_partitions", "owner_of", "replay"]

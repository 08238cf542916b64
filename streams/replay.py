"""``usync replay``: rebuild the table from the events topic alone, with no network.

Reads every partition from the beginning (or from the offsets for a time) up to the
end offsets taken at start, with manual assignment (no consumer group: replay never
moves a worker's offsets), and folds with the same pure ``fold_many`` as the worker.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.contract.config import Config
from streams.core import TableState, as_dict, compile_routes, drift_by_link, fold_many
from streams.adapters.kafka.readers import partitions_of, reader
from streams.contract.schema import envelope_decoder


async def replay(config: Config, since: datetime | None = None, console: Console | None = None,
                 batch: int = 10_000) -> tuple[TableState, int, float]:
    """Fold the events topic; return (state, envelopes folded, seconds)."""
    console = console or Console(stderr=True)
    topic = config.kafka.events_topic
    async with reader(config, request_timeout_ms=40_000, metadata_max_age_ms=300_000,
                      max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024) as consumer:
        partitions = await partitions_of(consumer, topic)
        if not partitions:
            raise SystemExit(f"usync replay: topic {topic} does not exist")
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        start = await consumer.beginning_offsets(partitions)
        if since is not None:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
            start = {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in partitions}
        for tp in partitions:
            consumer.seek(tp, start[tp])
        total = sum(end[tp] - start[tp] for tp in partitions)
        remaining = {tp for tp in partitions if end[tp] > start[tp]}
        state = TableState()
        routes = compile_routes(config.links)
        folded = 0
        began = time.perf_counter()
        with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]:>10,.0f} events/s"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("replay", total=total, rate=0.0)
            while remaining:
                records = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
                for tp, messages in records.items():
                    messages = [m for m in messages if m.offset < end[tp]]
                    fold_many(state, routes, (envelope_decoder.decode(m.value) for m in messages))
                    folded += len(messages)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                        consumer.pause(tp)
                elapsed = time.perf_counter() - began
                progress.update(task, completed=folded, rate=folded / elapsed if elapsed else 0.0)
        return state, folded, time.perf_counter() - began


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
    for part in ("rows", "index", "pending"):
        mine, theirs = local.get(part, {}), live.get(part, {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                differences.append(f"{part}[{key}]: replay={mine.get(key)!r} live={theirs.get(key)!r}")
    return differences

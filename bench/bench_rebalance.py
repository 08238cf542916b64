"""What a rebalance and a re-raise scan cost, against what moved (not part of pytest).

    .local/venv/bin/python bench/bench_rebalance.py [--rows 500000] [--partitions 8] [--scan-rows 1000000]

1. The identity index after rebalances (``streams.adapters.faust.tables.update_index``),
   on a real ``LinkTable`` with faust's memory store (``LinkMemoryStore``), filled as
   faust's recovery fills it (``apply_changelog_batch``), never started (no Kafka): the
   first recovery indexes every row; then 2 partitions are lost; then they come back
   (recovered again) while 1,000 rows of a kept partition are changed by the recovery
   (another writer). Each step: seconds, µs per row moved, and the event loop's longest
   stall (a task ticking every ms); beside it what each rebalance cost before issue 28
   (every row indexed again: ``rebuild``). The index is checked against one built from
   scratch at the end.
2. The re-raise scan (``streams.stages.reraise.Reraiser.scan``) of ``--scan-rows`` stored
   rows (encoded, read through ``TableMapping`` as a worker reads its table), 1 % in drift:
   its time and the loop's longest stall, beside the one-go ``drift_by_link`` pass it replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faust  # noqa: E402
from faust.types import TP  # noqa: E402

from streams.adapters.faust.index import RowIndex  # noqa: E402
from streams.adapters.faust.tables import (  # noqa: E402
    ROW, LinkTable, TableMapping, decode_row, define_tables, link_partitioner, rebuild,
)
from streams.contract.config import Endpoint, Link  # noqa: E402
from streams.core import Row, TableState, drift_by_link  # noqa: E402
from streams.stages.reraise import Reraiser  # noqa: E402
from streams.worker import tune_gc  # noqa: E402

USERS_PER_LINK = 1000


def row(link: str, user: str, drift: bool = False) -> Row:
    b, a = uuid.uuid4().hex, uuid.uuid4().hex
    now = 1_800_000_000_000_000
    return Row(link=link, user_username=user, b_offering_user_uuid=b, b_username=f"{user}_b", b_state="OK",
               b_event_id=uuid.uuid4().hex, b_observed_at=now, b_username_at=now, b_state_at=now,
               a_offering_user_uuid=a, a_username=f"{user}_a" if drift else f"{user}_b", a_state="OK",
               a_event_id=uuid.uuid4().hex, a_observed_at=now, a_username_at=now, a_state_at=now)


def event(key: bytes, value: bytes | None, partition: int) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=partition))


async def stall_during(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, str]:
    """(result, seconds, the longest stall): the longest gap between two ticks of a 1 ms
    ticker, as CPU time of this thread (what ran without yielding: the box's other load
    does not lengthen it) and as wall time (which the load does: the process waits for a core)."""
    done, longest, longest_wall = False, 0.0, 0.0

    async def ticker() -> None:
        nonlocal longest, longest_wall
        last, last_wall = time.thread_time(), time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now, now_wall = time.thread_time(), time.perf_counter()
            longest, last = max(longest, now - last), now
            longest_wall, last_wall = max(longest_wall, now_wall - last_wall - 0.001), now_wall

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    began = time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - began
        done = True
        await tick
    return result, elapsed, f"longest stall {longest * 1e3:5.1f} ms CPU ({longest_wall * 1e3:.0f} ms wall)"


def changelog_tps(table: faust.Table, partitions: set[int]) -> set[TP]:
    topic = table.changelog_topic.get_topic_name()
    return {TP(topic, p) for p in partitions}


async def index_bench(n_rows: int, n_partitions: int) -> None:
    app = faust.App("usync-bench-rebalance", store="memory://", Table=LinkTable, web_enabled=False)
    rows, index, _pending, _marks = define_tables(app, n_partitions)
    partition_of = link_partitioner(n_partitions)
    links = [f"link{i:04d}" for i in range(max(1, n_rows // USERS_PER_LINK))]
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for link in links:
        part = by_partition.setdefault(partition_of(link), [])
        part += [(f"{link}:u{j}".encode(), ROW.encode(row(link, f"u{j}"))) for j in range(USERS_PER_LINK)]

    def recover(partitions: set[int], changed: list[tuple[bytes, bytes]] = ()) -> int:  # type: ignore[assignment]
        """What faust's recovery does for newly active partitions: apply their changelog."""
        events = [event(k, v, p) for p in partitions for k, v in by_partition.get(p, [])]
        events += [event(k, v, partition_of(k.split(b":")[0].decode())) for k, v in changed]
        for start in range(0, len(events), 1000):
            rows.apply_changelog_batch(events[start:start + 1000])
        return len(events)

    everything = set(range(n_partitions))
    recover(everything)
    total = len(rows.data.data)
    print(f"index: {total:,} rows in {len(links):,} links over {n_partitions} partitions "
          f"(rows of a partition: {min(map(len, by_partition.values())):,}-{max(map(len, by_partition.values())):,})")

    _, seconds, stall = await stall_during(lambda: rows.on_recovery_completed(changelog_tps(rows, everything), set()))
    print(f"  first recovery, every row indexed:      {seconds:6.2f} s  {seconds / total * 1e6:5.2f} µs a row  "
          f"{stall}")

    lost = {0, 1}
    moved = sum(len(by_partition.get(p, [])) for p in lost)
    _, seconds, stall = await stall_during(
        lambda: rows.on_recovery_completed(changelog_tps(rows, everything - lost), set()))
    print(f"  {len(lost)} partitions lost ({moved:,} rows):       {seconds:6.2f} s  "
          f"{seconds / max(moved, 1) * 1e6:5.2f} µs a row moved  {stall} "
          f"(the store drops them too)")

    kept = sorted(everything - lost)[0]
    changed = [(k, ROW.encode(row(k.split(b":")[0].decode(), k.split(b":")[1].decode())))
               for k, _ in by_partition.get(kept, [])[:1000]]
    recover(lost, changed)
    _, seconds, stall = await stall_during(lambda: rows.on_recovery_completed(changelog_tps(rows, everything), set()))
    print(f"  {len(lost)} partitions gained ({moved:,} rows) + {len(changed):,} rows of a kept one changed by the "
          f"recovery: {seconds:6.2f} s  {seconds / max(moved + len(changed), 1) * 1e6:5.2f} µs a row moved  "
          f"{stall}")

    fresh = RowIndex(decode_row, partition_of)
    _, seconds, stall = await stall_during(lambda: rebuild(fresh, rows))
    print(f"  before: each rebalance indexed every row: {seconds:6.2f} s  ({stall})")
    same = dict(index) == dict(fresh)
    print(f"  the index after the rebalances equals one built from scratch: {same}")
    if not same:
        raise SystemExit("index differs")


async def scan_bench(n_rows: int) -> None:
    link = Link(name="link", source=Endpoint("b", "b" * 32), target=Endpoint("a", "a" * 32))
    stored = {f"link:u{j}".encode(): ROW.encode(row("link", f"u{j}", drift=j % 100 == 0)) for j in range(n_rows)}
    state = TableState(rows=TableMapping(stored, ROW))  # type: ignore[arg-type]
    raised: list[Row] = []

    async def request(found: Row) -> None:
        raised.append(found)

    reraiser = Reraiser([link], lambda: state, request, settle=0.0)
    reraiser.clock = SimpleNamespace(micros=lambda: 1_900_000_000_000_000)  # type: ignore[assignment]
    count, seconds, stall = await stall_during(reraiser.scan)
    print(f"re-raise scan: {n_rows:,} stored rows, {count:,} raised: {seconds:6.2f} s, "
          f"{stall}")

    async def one_go() -> Any:
        return drift_by_link(state, [link])

    _, seconds, stall = await stall_during(one_go)
    print(f"  before: drift_by_link in one go: {seconds:6.2f} s, {stall}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--scan-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    tune_gc()
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    await index_bench(args.rows, args.partitions)
    await scan_bench(args.scan_rows)


if __name__ == "__main__":
    asyncio.run(main())

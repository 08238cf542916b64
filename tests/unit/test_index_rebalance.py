"""A rebalance costs what moved: the identity index is updated for the partitions gained or
lost (``streams.adapters.faust.tables.update_index``), and the re-raise scan yields to the
event loop while it reads the table (``streams.stages.reraise``).

A real ``LinkTable`` on faust's memory store, never started: rows reach it as faust's
recovery brings them (``apply_changelog_batch``), and a recovery ends as faust ends it
(``on_recovery_completed``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

from streams.adapters.faust.index import RowIndex
from streams.adapters.faust.tables import ROW, LinkTable, TableMapping, decode_row, define_tables, link_partitioner, rebuild
from streams.contract.config import Endpoint, Link
from streams.core import Row, TableState
from streams.stages import reraise

PARTITIONS = 4
LINKS = [f"link{i}" for i in range(12)]


def row(link: str, user: str, a_uuid: str, a_username: str | None = None) -> Row:
    return Row(link=link, user_username=user, b_offering_user_uuid=f"{hash((link, user)) & (2**128 - 1):032x}",
               b_username=f"{user}_b", b_state="OK", b_observed_at=1, a_offering_user_uuid=a_uuid,
               a_username=a_username or f"{user}_b", a_state="OK", a_observed_at=1)


def event(key: bytes, value: bytes, partition: int) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=partition))


@pytest.fixture
def tables():
    app = faust.App("usync-index-rebalance", store="memory://", Table=LinkTable, web_enabled=False)
    rows, index, _pending, _marks = define_tables(app, PARTITIONS)
    return rows, index


def changelog(rows: LinkTable, partitions: set[int]) -> set[TP]:
    return {TP(rows.changelog_topic.get_topic_name(), p) for p in partitions}


def stored_rows(a_uuid: str = "a" * 32) -> dict[bytes, tuple[int, bytes]]:
    partition_of = link_partitioner(PARTITIONS)
    return {f"{link}:u{j}".encode(): (partition_of(link), ROW.encode(row(link, f"u{j}", f"{j:x}" + a_uuid[1:])))
            for link in LINKS for j in range(5)}


def recover(rows: LinkTable, stored: dict[bytes, tuple[int, bytes]], partitions: set[int]) -> None:
    rows.apply_changelog_batch([event(k, v, p) for k, (p, v) in stored.items() if p in partitions])


async def from_scratch(rows: LinkTable) -> dict[str, str]:
    fresh = RowIndex(decode_row, link_partitioner(PARTITIONS))
    await rebuild(fresh, rows)
    return dict(fresh)


def test_a_links_partition_is_the_one_its_by_link_records_go_to():
    """The route stage keys by-link records by link name; aiokafka's default partitioner places them."""
    partition_of, placed = link_partitioner(PARTITIONS), DefaultPartitioner()
    for link in [*LINKS, "b-to-a", "ünï", "x" * 200]:
        assert partition_of(link) == placed(link.encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))


async def test_partitions_lost_leave_the_index_and_partitions_gained_join_it(tables, caplog):
    rows, index = tables
    stored, everything = stored_rows(), set(range(PARTITIONS))
    partitions = {p for p, _ in stored.values()}
    assert len(partitions) >= 3  # the links spread over the partitions
    recover(rows, stored, everything)
    await rows.on_recovery_completed(changelog(rows, everything), set())
    assert dict(index) == await from_scratch(rows) and len(index) == 2 * len(stored)

    lost = set(sorted(partitions)[:2])
    await rows.on_recovery_completed(changelog(rows, everything - lost), set())
    assert index.partitions() == partitions - lost
    assert dict(index) == await from_scratch(rows) and len(index) == 2 * sum(p not in lost for p, _ in stored.values())

    # They come back (recovered again), and another writer changed a row of a kept partition meanwhile.
    kept_key = next(k for k, (p, _) in stored.items() if p not in lost)
    link, user = kept_key.decode().split(":")
    changed = ROW.encode(row(link, user, "c" * 32, a_username="elsewhere"))
    recover(rows, stored, lost)
    rows.apply_changelog_batch([event(kept_key, changed, stored[kept_key][0])])
    caplog.set_level("INFO", logger="usync.tables")
    await rows.on_recovery_completed(changelog(rows, everything), set())
    assert dict(index) == await from_scratch(rows) and index.get(f"{link}:target:{'c' * 32}") == user
    old_a_uuid = ROW.decode_at(kept_key.decode(), stored[kept_key][1]).a_offering_user_uuid
    assert index.get(f"{link}:target:{old_a_uuid}") is None  # the entry the changed row no longer implies
    [said] = [r.getMessage() for r in caplog.records if "gained" in r.getMessage()]
    assert f"{len([p for p, _ in stored.values() if p in lost])} rows indexed" in said and "1 rows changed" in said


async def test_the_reraise_scan_lets_the_loop_run_while_it_reads(monkeypatch):
    monkeypatch.setattr(reraise, "SCAN_SLICE", 10)
    link = Link(name="l", source=Endpoint("b", "b" * 32), target=Endpoint("a", "a" * 32))
    stored = {f"l:u{j}".encode(): ROW.encode(row("l", f"u{j}", f"{j:032x}", a_username="wrong" if j % 7 == 0 else None))
              for j in range(200)}
    state = TableState(rows=TableMapping(stored, ROW))  # type: ignore[arg-type]
    raised: list[str] = []

    async def request(found: Row) -> None:
        raised.append(found.user_username)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    scanner = reraise.Reraiser([link], lambda: state, request, settle=0.0)
    scanner.clock = SimpleNamespace(micros=lambda: 10**12)  # type: ignore[assignment]
    running = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = ticks
    try:
        assert await scanner.scan() == len(raised) == len(range(0, 200, 7))
    finally:
        running.cancel()
    assert ticks - before >= 200 // 10  # the ticker ran between the slices
    assert raised == [f"u{j}" for j in range(0, 200, 7)]  # in table order, as drift_by_link gives them

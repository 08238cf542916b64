"""Memory per row of the worker's memory store (not part of pytest).

    .local/venv/bin/python bench/bench_memory.py [--rows 100000] [--rocksdb]

Rows are made by the pure fold (``streams.core.fold_many``) from what a start-up
reconcile writes: one snapshot page of B and one of A per 300 users, then one username
event on B per user (a converged, then changed, row: every field a live row carries).
They are held as a worker holds them: the ``rows`` table's store (faust's memory store
as ``streams.adapters.faust.store.LinkMemoryStore`` makes it: a ``dict`` of ``bytes`` keys
to the values ``streams.adapters.faust.tables.ROW`` encodes), filled the way a restarted
worker fills it (``apply_changelog_batch``, as faust's recovery does), and the identity
index rebuilt from it (``streams.adapters.faust.index.RowIndex``: not stored). Prints the
RSS they add per row, and with ``--rocksdb`` the bytes on disk and RSS of the same rows in
RocksDB (``rocksdict``, as faust-streaming's RocksDB store uses it), plus the index in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faust  # noqa: E402

from streams.adapters.faust.index import RowIndex  # noqa: E402
from streams.adapters.faust.store import LinkMemoryStore  # noqa: E402
from streams.adapters.faust.tables import ROW, LinkTable, decode_row, define_tables, rebuild  # noqa: E402
from streams.contract.config import Endpoint, Link  # noqa: E402
from streams.contract.schema import (  # noqa: E402
    Envelope, OfferingUserEvent, OfferingUserRecord, Origin, SnapshotPage,
)
from streams.core import TableState, compile_routes, fold_many  # noqa: E402

PAGE = 300
OFF_A, OFF_B = "a" * 32, "b" * 32
LINK = Link(name="b-to-a", source=Endpoint("b", OFF_B), target=Endpoint("a", OFF_A))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def envelope(site: str, offering: str, body, source: Origin) -> Envelope:
    return Envelope(event_id=uuid.uuid4().hex, site=site, origin=source, offering_uuid=offering,
                    received_at=datetime.now(timezone.utc), body=body)


def chunk(start: int, n: int) -> list[Envelope]:
    users = [(f"user{start + i:07d}", uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex) for i in range(n)]
    def page(site: str, offering: str, side: int) -> Envelope:
        records = [OfferingUserRecord(uuid=u[side], user_uuid=u[3], user_username=u[0], offering_uuid=offering,
                                      username=f"{u[0]}_x", state="OK") for u in users]
        return envelope(site, offering, SnapshotPage(snapshot_id=uuid.uuid4().hex, offering_uuid=offering,
                                                     states=["OK"], page=1, last=True, total=n, users=records),
                        Origin.SNAPSHOT)
    events = [envelope("b", OFF_B, OfferingUserEvent(action="update", offering_user_uuid=u[1], user_uuid=u[3],
                                                     username=f"{u[0]}_b"), Origin.STOMP) for u in users]
    return [page("b", OFF_B, 1), page("a", OFF_A, 2), *events]


def fold_rows(rows: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every row, as the changelog holds them, a page of users at a time."""
    routes = compile_routes([LINK])
    for start in range(0, rows, PAGE):
        state = TableState()
        fold_many(state, routes, chunk(start, min(PAGE, rows - start)))
        yield from ((k.encode(), ROW.encode(v)) for k, v in state.rows.items())


def write_changelog(rows: int, path: str) -> None:
    """The rows' changelog, as length-prefixed msgpack batches of 1,000 (key, value) pairs."""
    encode = msgspec.msgpack.encode
    with open(path, "wb") as out:
        batch: list[tuple[bytes, bytes]] = []
        for pair in fold_rows(rows):
            batch.append(pair)
            if len(batch) == 1000:
                raw = encode(batch)
                out.write(len(raw).to_bytes(4, "big") + raw)
                batch = []
        raw = encode(batch)
        out.write(len(raw).to_bytes(4, "big") + raw)


def changelog(rows: int) -> str:
    """Folded in a child process, so that the fold's garbage is not in the RSS measured here."""
    path = tempfile.mktemp(prefix="usync-bench-changelog-")
    child = multiprocessing.get_context("fork").Process(target=write_changelog, args=(rows, path))
    child.start()
    child.join()
    return path


def read_changelog(path: str) -> Iterator[list[tuple[bytes, bytes]]]:
    """The batches, each pair new bytes objects (as a Kafka fetch gives them)."""
    decode = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]]).decode
    with open(path, "rb") as f:
        while size := f.read(4):
            yield decode(f.read(int.from_bytes(size, "big")))


def rows_table() -> faust.Table:
    app = faust.App("usync-bench-memory", store="memory://", Table=LinkTable)
    table, _index, _pending, _marks = define_tables(app, 1)
    return table


def recover(store: LinkMemoryStore, path: str) -> None:
    """Fill the rows table's memory store as a restart does: faust's recovery applies the changelog."""
    for batch in read_changelog(path):
        events = [changelog_event(key, value) for key, value in batch]
        store.apply_changelog_batch(events, to_key=_same, to_value=_same)


def changelog_event(key: bytes, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=0))


def _same(x: bytes) -> bytes:
    return x


def rocksdb(path_changelog: str, n: int) -> tuple[int, int, int]:
    """Bytes on disk, RSS of the store, RSS of the index built from it."""
    from rocksdict import Rdict  # faust-streaming's RocksDB store
    path = tempfile.mkdtemp(prefix="usync-bench-rocks-")
    try:
        before = rss()
        db = Rdict(f"{path}/rows")
        for batch in read_changelog(path_changelog):
            for key, value in batch:
                db[key] = value
        db.flush()
        db.close()
        db = Rdict(f"{path}/rows")  # reopened and read through, as a worker serving it
        for _ in db.keys():
            pass
        gc.collect()
        grown = rss() - before
        index = RowIndex(decode_row)
        index.add(db.items(), n)
        gc.collect()
        indexed = rss() - before - grown
        disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        return disk, grown, indexed
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rocksdb", action="store_true")
    args = parser.parse_args()
    path = changelog(args.rows)
    table = rows_table()
    store = table.data
    gc.collect()
    before = rss()
    recover(store, path)
    gc.collect()
    stored = rss() - before
    index = RowIndex(decode_row)
    started = time.perf_counter()
    asyncio.run(rebuild(index, table))  # what the worker does after each recovery (define_tables)
    took = time.perf_counter() - started
    gc.collect()
    indexed = rss() - before - stored
    n = len(store.data)
    value_bytes = sum(map(len, store.data.values()))
    key_bytes = sum(map(len, store.data))
    print(f"rows={n} index entries={len(index.slots) + len(index.other)} value bytes/row={value_bytes / n:.0f} "
          f"key bytes/row={key_bytes / n:.0f}")
    print(f"memory store: rows rss bytes/row={stored / n:.0f}, index rss bytes/row={indexed / n:.0f}; "
          f"index rebuilt in {took:.2f} s ({took / n * 1e6:.1f} µs a row)")
    if args.rocksdb:
        disk, rocks_rss, rocks_index = rocksdb(path, n)
        print(f"rocksdb: disk bytes/row={disk / n:.0f} rss bytes/row={rocks_rss / n:.0f} "
              f"index rss bytes/row={rocks_index / n:.0f}")
    os.unlink(path)
    print(f"memory: rows={n} rss_bytes_per_row={(stored + indexed) / n:.0f}")


if __name__ == "__main__":
    main()

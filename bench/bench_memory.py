"""Memory per row of the worker's memory store (not part of pytest).

    .local/venv/bin/python bench/bench_memory.py [--rows 100000] [--rocksdb]

Rows are made by the pure fold (``streams.core.fold_many``) from what a start-up
reconcile writes: one snapshot page of B and one of A per 300 users, then one username
event on B per user (a converged, then changed, row: every field a live row carries).
They are stored as the worker stores them: faust's memory store is a ``dict`` of
``bytes`` keys to ``bytes`` values per table (``faust.stores.memory.Store.data``), the
values msgpack (``streams.adapters.faust.tables``): ``rows`` (one per link and user) and
``index`` (one per side: two per row). Prints the RSS the stores add, per row, and with
``--rocksdb`` the bytes on disk and RSS of the same keys and values in RocksDB
(``rocksdict``, as faust-streaming's RocksDB store uses it).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.adapters.faust.tables import ROW, USER  # noqa: E402
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


def build(rows: int) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The two stores, filled a page of users at a time (the fold's own state is dropped)."""
    routes = compile_routes([LINK])
    store_rows: dict[bytes, bytes] = {}
    store_index: dict[bytes, bytes] = {}
    for start in range(0, rows, PAGE):
        state = TableState()
        fold_many(state, routes, chunk(start, min(PAGE, rows - start)))
        store_rows.update((k.encode(), ROW.encode(v)) for k, v in state.rows.items())
        store_index.update((k.encode(), USER.encode(v)) for k, v in state.index.items())
    return store_rows, store_index


def rocksdb(store_rows: dict[bytes, bytes], store_index: dict[bytes, bytes]) -> tuple[int, int]:
    from rocksdict import Rdict  # faust-streaming's RocksDB store
    path = tempfile.mkdtemp(prefix="usync-bench-rocks-")
    try:
        before = rss()
        for name, data in (("rows", store_rows), ("index", store_index)):
            db = Rdict(f"{path}/{name}")
            for key, value in data.items():
                db[key] = value
            db.flush()
            db.close()
        for name in ("rows", "index"):  # reopened and read through, as a worker serving them
            db = Rdict(f"{path}/{name}")
            for _ in db.keys():
                pass
        grown = rss() - before
        disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        return disk, grown
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rocksdb", action="store_true")
    args = parser.parse_args()
    gc.collect()
    before = rss()
    store_rows, store_index = build(args.rows)
    gc.collect()
    grown = rss() - before
    n = len(store_rows)
    value_bytes = sum(map(len, store_rows.values())) + sum(map(len, store_index.values()))
    key_bytes = sum(map(len, store_rows)) + sum(map(len, store_index))
    print(f"rows={n} index={len(store_index)} msgpack value bytes/row={value_bytes / n:.0f} "
          f"key bytes/row={key_bytes / n:.0f}")
    if args.rocksdb:
        disk, rocks_rss = rocksdb(store_rows, store_index)
        print(f"rocksdb: disk bytes/row={disk / n:.0f} rss bytes/row={rocks_rss / n:.0f}")
    print(f"memory: rows={n} rss_bytes_per_row={grown / n:.0f}")


if __name__ == "__main__":
    main()

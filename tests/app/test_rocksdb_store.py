"""The production store: RocksDB (rocksdict) under the fold's bulk changelog writer.

The fold writes the store directly and records the changelog offset it reached
(``set_persisted_offset``); a worker restarted on the same data directory must come back
with the same table, keep folding, and still equal a replay of the topics.
"""

from __future__ import annotations

import asyncio
import subprocess

from tests.app.harness import USYNC, LinkSpec, bridge_and_worker, until, usernames

FIELDS = ("b_offering_user_uuid", "b_username", "b_state", "a_offering_user_uuid", "a_username", "a_state")


async def test_rocksdb_table_survives_a_restart_and_equals_replay(setup, bridge):
    s = setup
    pairs = {f"k{i}": s.add_user(f"k{i}") for i in range(5)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    store = ("--store", "rocksdb", "--data-dir", str(s.tmp / "rocksdb"))
    _, worker = await bridge_and_worker(s, bridge, path, *store)
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    await until(lambda: usernames(s.a, s.offering_a) == {n: f"{n}_b" for n in pairs}, 60, "A to converge")

    async def settled(w, want: dict[str, str]) -> dict | None:
        table = await w.table()
        rows = table["rows"]
        ok = {k.split(":", 1)[1]: r.get("a_username") for k, r in rows.items() if r.get("a_username") == r.get("b_username")}
        return table if ok == want else None
    before = await until(lambda: settled(worker, {n: f"{n}_b" for n in pairs}), 30, "the live table to settle")
    assert any((s.tmp / "rocksdb").rglob("CURRENT")), "no RocksDB database was written"

    worker.stop()
    restarted = s.start_worker(path, *store)
    await restarted.ready()

    # Which event last confirmed a value may still move (A's echo of a PATCH can be folded
    # after ``before`` was read); the values themselves may not. The replay below checks
    # the whole rows.
    def values(table: dict) -> dict:
        return {key: {f: row.get(f) for f in FIELDS} for key, row in table["rows"].items()} | {"index": table["index"]}

    async def recovered() -> bool:
        return values(await restarted.table()) == values(before)
    await until(recovered, 60, "the restarted worker to recover the same table")
    # its reconcile at start writes snapshot facts; the change below must come after them,
    # or the replay below could start before they are in the topic
    await until(lambda: "reconciled link hpc" in restarted.log_text(), 30, "the restarted worker's reconcile")

    _, b_ou = pairs["k0"]
    s.b.set_username(b_ou, "k0_again")
    want = {n: f"{n}_b" for n in pairs} | {"k0": "k0_again"}
    await until(lambda: usernames(s.a, s.offering_a) == want, 60, "A to follow a change after the restart")
    await until(lambda: settled(restarted, want), 30, "the restarted worker's table to settle")

    proc = await asyncio.create_subprocess_exec(
        USYNC, "replay", "--config", str(path), "--compare", restarted.url + "/usync/table/",
        env=s.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, output.decode()
    assert "replay equals the live table" in output.decode()

"""Replay: the events topic alone, folded with no network, rebuilds the live table exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.app.harness import USYNC, LinkSpec, bridge_and_worker, until, usernames


async def test_replay_reproduces_the_live_table(setup, bridge):
    s = setup
    pairs = {f"r{i}": s.add_user(f"r{i}") for i in range(5)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    _, worker = await bridge_and_worker(s, bridge, path)
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")  # events: update + username_set on B, lookups, PATCHes, A's events
    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 60, "A to converge")
    await s.a.publisher.drain()
    await s.b.publisher.drain()

    # the live table settles once A's own events (from the PATCHes) are folded
    async def settled() -> bool:
        rows = (await worker.table())["rows"]
        return len(rows) == 5 and all(r.get("a_username") == r.get("b_username") for r in rows.values())
    await until(settled, 30, "the live table to settle")

    out = s.tmp / "replay.json"
    proc = await asyncio.create_subprocess_exec(
        USYNC, "replay", "--config", str(path), "--json", str(out), "--compare", worker.url + "/usync/table/",
        env=s.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = output.decode()
    assert proc.returncode == 0, text
    assert "replay equals the live table" in text
    replayed = json.loads(out.read_text())
    assert replayed == await worker.table()
    assert set(replayed["rows"]) == {f"hpc:{name}" for name in pairs}

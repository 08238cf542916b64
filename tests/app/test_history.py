"""Compact history (issue 25): a reconcile pass adds to the permanent log only what it changes,
the table can be had as of any instant from checkpoints, and a replay equals the live table."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import httpx

from streams.contract.schema import envelope_decoder
from tests.app.harness import USYNC, LinkSpec, Setup, bridge_and_worker, patches, read_all, until, usernames

FAST_RATES = "requests_per_second = 200\nburst = 200\nconcurrency = 16"


async def kinds(topic: str) -> Counter:
    """How many envelopes of each body kind the topic holds."""
    return Counter(envelope_decoder.decode(m.value).body.__class__.__name__ for m in await read_all(topic))


async def metric(worker: Any, name: str) -> float:
    r = await worker.get("/metrics")
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)) if r else 0.0


async def run(s: Setup, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(USYNC, *args, env=s.env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, output.decode()
    return output.decode()


async def replay_equals_live(s: Setup, path: Any, worker: Any) -> None:
    text = await run(s, "replay", "--config", str(path), "--compare", worker.url + "/usync/table/")
    assert "replay equals the live table" in text, text


async def a_pass(worker: Any) -> None:
    """A reconcile pass, done when the fold compared every page it wrote."""
    written = await metric(worker, "usync_snapshot_pages_total")
    async with httpx.AsyncClient(timeout=120) as client:
        assert (await client.post(worker.url + "/usync/reconcile/")).status_code == 200
    pages = await metric(worker, "usync_snapshot_pages_total")
    assert pages > written
    await until(lambda: _compared(worker, pages), 60, "the fold to compare the pass's pages")


async def _compared(worker: Any, pages: float) -> bool:
    return await metric(worker, "usync_listing_pages_compared_total") >= pages


async def test_passes_write_only_what_they_change_and_replay_equals_live(setup):
    s = setup
    s.a.events_enabled = s.b.events_enabled = False
    users = {f"u{i:04d}": s.add_user(f"u{i:04d}") for i in range(1000)}
    for name, (a_ou, b_ou) in users.items():  # converged before usync starts
        s.b.set_username(b_ou, name)
        s.a.set_username(a_ou, name)
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False, rates=FAST_RATES,
                          top="reraise_interval = 2\n")
    config = s.config(path)
    worker = s.start_worker(path)
    await worker.ready()

    async def start_up_pass_folded() -> bool:
        rows = (await worker.table())["rows"]
        return len(rows) == 1000 and all("a_offering_user_uuid" in r and "b_offering_user_uuid" in r
                                         for r in rows.values())
    await until(start_up_pass_folded, 90, "the start-up pass to be folded")
    first = await kinds(config.kafka.events_topic)
    assert first["Listed"] == 2000  # an empty table: every user of both listings is new to it
    assert patches(s.a) == []
    await replay_equals_live(s, path, worker)

    for _ in range(3):  # a converged link: each pass writes one summary per listing, no user
        await a_pass(worker)
        await replay_equals_live(s, path, worker)
    after = await kinds(config.kafka.events_topic)
    assert after - first == Counter(ListingSummary=6)

    drifted = list(users)[:10]
    removed = list(users)[10:15]
    for name in drifted:
        s.a.drift_username(users[name][0], f"{name}-drift")
    for name in removed:
        s.b.delete_offering_user(users[name][1])
    seq = len(patches(s.a))
    await a_pass(worker)
    await until(lambda: all(s.a.offering_user(users[n][0]).username == n for n in drifted), 60,
                "the drifts on A to be corrected")
    async def unlisted_written() -> bool:
        return (await kinds(config.kafka.events_topic))["Unlisted"] == 5
    await until(unlisted_written, 30, "the pass's Unlisted facts")
    bodies = [envelope_decoder.decode(m.value).body for m in await read_all(config.kafka.events_topic)]
    wrote = await kinds(config.kafka.events_topic) - after
    assert (wrote["Listed"], wrote["Unlisted"], wrote["ListingSummary"]) == (10, 5, 2)  # the 15, and the pass's 2
    assert sorted(b.was_username for b in bodies if type(b).__name__ == "Listed" and b.user.username.endswith("-drift")) \
        == sorted(drifted)
    assert sorted(b.user_username for b in bodies if type(b).__name__ == "Unlisted") == sorted(removed)
    assert len(patches(s.a)) - seq == 10
    assert usernames(s.a, s.offering_a) == {n: n for n in users}

    async def settled() -> bool:
        rows = (await worker.table())["rows"]
        return all(rows[f"hpc:{n}"].get("b_state") == "Unlisted" for n in removed)
    await until(settled, 30, "the removed users to be unlisted in the table")
    await replay_equals_live(s, path, worker)

    # kill -9 between a pass's listing and its writes: the worker is gone when the listing is
    # made; the next owner compares it with the committed table (its changelog), not with
    # anything held in memory, and writes the differences (KIP-557's trap, KAFKA-12508)
    worker.kill9()
    again = list(users)[20:25]
    for name in again:
        s.a.drift_username(users[name][0], f"{name}-again")
    before = await kinds(config.kafka.events_topic)
    await run(s, "reconcile", "--config", str(path))
    successor = s.start_worker(path, "--no-reconcile")  # only the listing made while no worker ran
    await successor.ready()
    await until(lambda: all(s.a.offering_user(users[n][0]).username == n for n in again), 90,
                "the drifts listed while no worker ran to be corrected")
    wrote = await kinds(config.kafka.events_topic) - before
    assert (wrote["Listed"], wrote["ListingSummary"]) == (5, 2)
    await replay_equals_live(s, path, successor)


async def test_replay_until_any_instant_equals_the_table_then_and_plain_replay_starts_from_a_checkpoint(setup, bridge):
    s = setup
    users = {f"c{i:02d}": s.add_user(f"c{i:02d}") for i in range(20)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], top="checkpoint_interval = 3\n")
    _, worker = await bridge_and_worker(s, bridge, path)
    captured: list[tuple[str, dict]] = []
    for phase in range(3):
        for name, (_, b_ou) in list(users.items())[phase * 5:phase * 5 + 8]:  # overlapping: users change twice
            s.b.set_username(b_ou, f"{name}-{phase}")
        want = {n: s.b.offering_user(b).username or "" for n, (_, b) in users.items()}
        await until(lambda: usernames(s.a, s.offering_a) == want, 60, f"A to converge in phase {phase}")
        await until(lambda: _settled(worker, want), 30, f"the table to settle in phase {phase}")
        written = await metric(worker, "usync_checkpoints_total")
        table = await worker.table()
        captured.append((datetime.now(timezone.utc).isoformat(), table))
        assert await worker.table() == table  # nothing moved around the instant
        await until(lambda: _more(worker, written), 30, "a checkpoint after the instant")

    for instant, table in captured:
        out = s.tmp / "until.json"
        text = await run(s, "replay", "--config", str(path), "--until", instant, "--json", str(out))
        assert "from checkpoints as of" in text, text
        assert json.loads(out.read_text()) == table, instant
    plain, whole = s.tmp / "plain.json", s.tmp / "whole.json"
    assert "from checkpoints as of" in await run(s, "replay", "--config", str(path), "--json", str(plain))
    assert "from the beginning" in await run(s, "replay", "--config", str(path), "--from-beginning", "--json",
                                             str(whole))
    live = await worker.table()
    assert json.loads(plain.read_text()) == json.loads(whole.read_text()) == live


async def _settled(worker: Any, want: dict[str, str]) -> bool:
    rows = (await worker.table())["rows"]
    return all(rows.get(f"hpc:{n}", {}).get("a_username") == u == rows[f"hpc:{n}"].get("b_username")
               for n, u in want.items() if u)


async def _more(worker: Any, written: float) -> bool:
    return await metric(worker, "usync_checkpoints_total") > written

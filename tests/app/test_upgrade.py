"""A rolling upgrade from the release before compact history (fdba040): workers replaced one at
a time, old and new in one group meanwhile, changes flowing; nothing is lost, A = B, replay = live."""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import tarfile
from typing import Any

import httpx

from streams.contract.schema import envelope_decoder
from tests.app.harness import ROOT, USYNC, LinkSpec, bridge_and_worker, read_all, until, usernames

OLD_RELEASE = "fdba040e7fed9f79edcffc607d108288dd049990"  # main before the listings topic (2026-12-01)


def old_tree(tmp: Any) -> Any:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_RELEASE, "streams"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp / "old", filter="data")
    return tmp / "old"


async def test_a_rolling_upgrade_loses_nothing_and_ends_with_replay_equal_to_live(setup, bridge):
    s = setup
    users = {f"g{i:02d}": s.add_user(f"g{i:02d}") for i in range(30)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], reconcile_interval=6)
    old = old_tree(s.tmp)
    _, first = await bridge_and_worker(s, bridge, path, code=old)
    second = s.start_worker(path, code=old)
    await second.ready()
    rng = random.Random(5)
    stop = asyncio.Event()

    async def changes() -> None:  # B's usernames change all along the upgrade
        n = 0
        while not stop.is_set():
            name = rng.choice(list(users))
            s.b.set_username(users[name][1], f"{name}-{n}")
            n += 1
            await asyncio.sleep(0.2)
    changing = asyncio.create_task(changes())
    await asyncio.sleep(8)
    new = []
    for old_worker in (first, second):  # one at a time: the group holds old and new meanwhile
        old_worker.stop()
        worker = s.start_worker(path)
        await worker.ready()
        new.append(worker)
        if old_worker is first:  # a new worker's pass while an old one is in the group: as the old ones write
            async with httpx.AsyncClient(timeout=60) as client:
                assert (await client.post(worker.url + "/usync/reconcile/")).status_code == 200
            assert "does not read the listings topic yet" in worker.log_text()
        await asyncio.sleep(10)  # a reconcile pass or two with the group mixed, then with only new workers
    await asyncio.sleep(8)
    stop.set()
    await changing

    want = {n: s.b.offering_user(b).username or "" for n, (_, b) in users.items()}
    await until(lambda: usernames(s.a, s.offering_a) == want, 90, "A to equal B after the upgrade")
    config = s.config(path)
    kinds = {type(envelope_decoder.decode(m.value).body).__name__ for m in await read_all(config.kafka.events_topic)}
    assert {"SnapshotPage", "ListingSummary"} <= kinds  # listings while an old worker was in the group, then summaries
    out = s.tmp / "replay.json"

    async def live_equals_replay() -> bool:
        proc = await asyncio.create_subprocess_exec(USYNC, "replay", "--config", str(path), "--json", str(out),
                                                    env=s.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        replayed = json.loads(out.read_text())
        tables = [await w.table() for w in new]  # each holds its partitions (and standby copies)
        rows_ok = all(any(t["rows"].get(k) == v for t in tables) for k, v in replayed["rows"].items())
        orphans = {k for t in tables for k in t["rows"]} - set(replayed["rows"])
        marks_ok = all(any(t["marks"].get(k) == v for t in tables) for k, v in replayed["marks"].items())
        return rows_ok and not orphans and marks_ok and len(replayed["rows"]) == len(users)
    await until(live_equals_replay, 90, "the live tables to equal a replay", interval=2)

"""Federation scenarios: the generator's shape, the change driver's rate, and `serve` with one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec
import pytest

from waldursim import ChangeDriver, Federation, federation_scenario
from waldursim.federation import parse_federation

from tests.app.harness import USYNC, until
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ

ROOT = Path(__file__).resolve().parents[2]


def _plan(links) -> list[tuple]:
    """What a seed decides, without the (random) uuids."""
    return [(link.name, link.source_site, link.target_site, sorted(link.pairs)) for link in links]


def test_shape_fanout_users_and_big_offering() -> None:
    fed, links = federation_scenario(sites=5, links=9, fanout=3, users=40, big_users=500, seed=11,
                                     federation=Federation(broker_enabled=False))
    assert sorted(fed.sites) == ["s0", "s1", "s2", "s3", "s4"] and [l.name for l in links] == [f"link{i}" for i in range(9)]
    fan, rest = links[:3], links[3:]
    assert {(l.source_site, l.source_offering) for l in fan} == {("s0", fan[0].source_offering)}  # ONE source offering
    assert len({l.target_site for l in fan}) == 3 and "s0" not in {l.target_site for l in fan}
    assert len({l.target_offering for l in links}) == 9 and len({l.source_offering for l in rest}) == 6
    assert all(l.source_site != l.target_site for l in links)
    assert [len(l.pairs) for l in links] == [40, 40, 40, 500, 40, 40, 40, 40, 40]
    assert all(set(l.pairs) == set(fan[0].pairs) for l in fan)
    assert all(l.pairs[u][0] == fan[0].pairs[u][0] for l in fan for u in l.pairs)  # shared source offering users
    for link in links:
        src, tgt = fed[link.source_site].store, fed[link.target_site].store
        assert len(src.ou_by_offering[link.source_offering]) == len(tgt.ou_by_offering[link.target_offering]) == len(link.pairs)
        for user, (s_ou, t_ou) in link.pairs.items():
            s, t = src.offering_users[s_ou], tgt.offering_users[t_ou]
            assert s.username == t.username == f"{user}-v0" and s.state.name == t.state.name == "OK"
            assert src.users[s.user].username == tgt.users[t.user].username == user
    assert all(not site.outgoing and not site.suppressed for site in fed.sites.values())  # populated without events


def test_determinism_by_seed() -> None:
    def plan(seed: int) -> list[tuple]:
        return _plan(federation_scenario(sites=8, links=20, fanout=4, users=5, seed=seed,
                                         federation=Federation(broker_enabled=False))[1])

    assert plan(3) == plan(3)
    assert plan(3) != plan(4)  # another seed puts the targets elsewhere
    fed, links = federation_scenario(sites=3, links=3, fanout=1, users=30, federation=Federation(broker_enabled=False))
    first, again = ChangeDriver(fed, links, 10, seed=5), ChangeDriver(fed, links, 10, seed=5)
    first = [(c.user_username, c.username) for c in (first.step() for _ in range(20))]
    again = [(c.user_username, c.username) for c in (again.step() for _ in range(20))]
    assert first == again and len({u for u, _n in first}) > 1


def test_a_hundred_thousand_users_build_fast() -> None:
    t0 = time.monotonic()
    fed, _links = federation_scenario(sites=10, links=40, fanout=5, users=700, big_users=25_000, seed=1,
                                      federation=Federation(broker_enabled=False))
    elapsed = time.monotonic() - t0
    assert sum(len(site.store.offering_users) for site in fed.sites.values()) >= 100_000 and elapsed < 30, elapsed


def test_spec_from_the_command_line() -> None:
    spec = parse_federation("sites=50, links=200,fanout=20,users=278,big_users=50000,change_rate=2.5")
    assert (spec.sites, spec.links, spec.fanout, spec.users, spec.big_users, spec.change_rate) == (50, 200, 20, 278, 50000, 2.5)
    with pytest.raises(msgspec.ValidationError, match="fanout"):
        parse_federation("links=2,fanout=3")
    with pytest.raises(msgspec.ValidationError):
        parse_federation("nodes=3")


async def test_change_driver_rate_against_the_event_log(sim_federation: Federation) -> None:
    rate = 40.0
    fed, links = federation_scenario(sites=4, links=3, fanout=3, users=50, seed=2, federation=sim_federation)
    await fed.start()
    s0 = fed["s0"]
    mgr = s0.create_user("mgr")
    s0.add_offering_manager(mgr, links[0].source_offering)
    await s0.subscribe(mgr, links[0].source_offering)
    driver = ChangeDriver(fed, links, rate, seed=2)
    driver.start()
    try:
        updates = lambda: [o for o in s0.outgoing if o.message.action == "update"]  # noqa: E731
        await until(lambda: len(updates()) >= 3 * rate, 30, f"{3 * rate:.0f} update events", interval=0.05)
    finally:
        await driver.stop()
    events = updates()
    start = events[0].time
    in_window = [o for o in events if start + 0.5 <= o.time < start + 2.5]
    assert 2 * rate * 0.9 <= len(in_window) <= 2 * rate * 1.1, len(in_window)
    assert len(events) == len([c for c in driver.changes if c.at <= events[-1].time])
    kinds = Counter(o.message.action for o in s0.outgoing)
    assert kinds["update"] == kinds["username_set"] == len(driver.changes)  # Slurm: both, as a PATCH
    newest = {c.offering_user: c.username for c in driver.changes}
    assert all(s0.store.offering_users[ou].username == username for ou, username in newest.items())
    await s0.publisher.drain(30)
    assert s0.publisher.stats.confirmed >= 2 * len(driver.changes) - 2


def _scenario(path: Path, rate: float) -> Path:
    path.write_text(
        f'seed = 4\npublish_rate = 0\n[rabbitmq]\nmanagement_url = "{RABBITMQ.management_url}"\n'
        f'amqp_port = {RABBITMQ.amqp_port}\n[federation]\nsites = 4\nlinks = 6\nfanout = 2\nusers = 30\n'
        f'big_users = 200\nseed = 4\nchange_rate = {rate}\nkafka_bootstrap = "{KAFKA_BOOTSTRAP}"\n'
        f'broker_url = "{RABBITMQ.web_stomp_url}"\n')
    return path


async def test_serve_a_federation_drives_changes_and_writes_a_usync_config(tmp_path: Path) -> None:
    config = tmp_path / "usync.toml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waldursim", "serve", str(_scenario(tmp_path / "fed.toml", 20)), "--json",
        "--usync-config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        document = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))  # type: ignore[union-attr]
        started = time.monotonic()
        assert [s["name"] for s in document["sites"]] == ["s0", "s1", "s2", "s3"] and len(document["links"]) == 6
        assert [l["users"] for l in document["links"]] == [30, 30, 200, 30, 30, 30]
        assert document["links"][0]["source"] == document["links"][1]["source"]
        check = await asyncio.to_thread(subprocess.run, [USYNC, "config", "check", str(config)], capture_output=True,
                                        text=True, env={**os.environ, **document["token_env"]}, cwd=ROOT, timeout=180)
        assert check.returncode == 0 and "OK (4 sites, 6 links)" in check.stdout, check.stderr
        assert f'bootstrap_servers = "{KAFKA_BOOTSTRAP}"' in config.read_text()
        sites = {s["name"]: s for s in document["sites"]}

        async def newest_change() -> int:
            newest = 0
            for link in document["links"]:
                site = sites[link["source"]["site"]]
                async with httpx.AsyncClient(base_url=site["url"], headers={"Authorization": f"Token {site['staff_token']}"}) as c:
                    r = await c.get("marketplace-offering-users/", params={
                        "offering_uuid": link["source"]["offering"], "page_size": 300})
                    for page in [r.json()] + [(await c.get("marketplace-offering-users/", params={
                            "offering_uuid": link["source"]["offering"], "page_size": 300, "page": p})).json()
                            for p in range(2, -(-int(r.headers["X-Result-Count"]) // 300) + 1)]:
                        newest = max([newest] + [int(o["username"].rsplit("-c", 1)[1]) for o in page if "-c" in o["username"]])
            return newest

        async def forty() -> int | None:  # the served state (REST): 40 changes at 20/s
            n = await newest_change()
            return n if n >= 40 else None
        n = await until(forty, 30, "40 changes served")
        assert n <= 20 * (time.monotonic() - started) + 25  # paced, not a burst
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

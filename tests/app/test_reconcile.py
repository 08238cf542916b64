"""Seed Suite 3 and drift: what no event announced is found by reconciliation and repaired."""

from __future__ import annotations

import httpx

from tests.app.harness import LinkSpec, last_seq, patches, until, usernames


async def _reconcile(worker) -> dict:
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.post(worker.url + "/usync/reconcile/")
    assert r.status_code == 200, r.text
    return r.json()["reconciled"]


async def _drift(worker, link: str) -> int | None:
    r = await worker.get("/usync/drift/")
    return None if r is None else r.json()["links"][link]["drift"]


async def _outcomes(worker) -> str:
    r = await worker.get("/metrics")
    return r.text if r is not None else ""


async def test_mismatch_without_events_is_repaired_by_reconcile(setup):
    s = setup
    # events off on both sites: nothing announces these mismatches (and no bridge at all)
    s.a.events_enabled = s.b.events_enabled = False
    pairs = {name: s.add_user(name) for name in ("u1", "u2", "u3")}
    for name, (a_ou, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    # a second, non-qualifying link (reconcile = false) over a second offering pair
    off_a2 = s.a.create_offering(s.a.create_customer("sp2"), "hpc2")
    off_b2 = s.b.create_offering(s.b.create_customer("sp2"), "hpc2")
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b),
                           LinkSpec("quiet", off_a2, off_b2, reconcile=False)], broker=False)
    worker = s.start_worker(path)
    await worker.ready()

    # the start-up pass repairs every mismatch
    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 60, "A to take B's usernames")
    assert len(patches(s.a)) == 3
    await until(lambda: "skipping link quiet: reconcile = false" in worker.log_text(), 10, "the skip log line")

    # a second pass is a no-op
    await until(lambda: _settled(worker), 30, "the fold to see A's new usernames")
    seq = last_seq(s.a)
    done = await _reconcile(worker)
    assert set(done) == {"hpc"}  # the quiet link is skipped
    await until(lambda: _settled(worker), 30, "the second pass to be folded")
    assert patches(s.a, seq) == []
    assert usernames(s.a, s.offering_a) == want


async def _settled(worker) -> bool:
    return await _drift(worker, "hpc") == 0 and "usync_corrections_requested" in await _outcomes(worker)


async def test_drift_on_a_is_put_back(setup):
    s = setup
    s.a.events_enabled = s.b.events_enabled = False
    a_ou, b_ou = s.add_user("dora")
    s.b.set_username(b_ou, "dora_b")
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False)
    worker = s.start_worker(path)
    await worker.ready()
    await until(lambda: s.a.offering_user(a_ou).username == "dora_b", 60, "the first correction")

    # someone changes A behind usync's back (no event); the next reconcile puts B's value back
    s.a.drift_username(a_ou, "intruder")
    seq = last_seq(s.a)
    await _reconcile(worker)
    await until(lambda: s.a.offering_user(a_ou).username == "dora_b", 30, "A to be put back")
    assert len(patches(s.a, seq)) == 1

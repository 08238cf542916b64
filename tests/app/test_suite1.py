"""Seed Suite 1: a username set on B is PATCHed onto A; a second pass sends no PATCH."""

from __future__ import annotations

from tests.app.harness import LinkSpec, bridge_ready, last_seq, patches, until


async def test_username_set_on_b_is_patched_onto_a(setup, bridge):
    s = setup
    a_ou, b_ou = s.add_user("alice")
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    config = s.config(path)
    b = await bridge(config)
    worker = s.start_worker(path)
    await worker.ready()
    await until(lambda: bridge_ready(b, 2), 30, "the bridge's subscriptions")

    # both offering users exist, Requested and empty; usync knows A's (start-up reconcile)
    assert a_ou.username == "" and b_ou.username == ""
    await until(lambda: _row_known(worker, "hpc:alice"), 60, "the row of alice")

    s.b.set_username(b_ou, "alice_b")
    await until(lambda: s.a.offering_user(a_ou).username == "alice_b", 30, "A's username to follow B")
    assert len(patches(s.a)) == 1

    # second pass: a reconcile over a converged system sends no PATCH
    seq = last_seq(s.a)
    r = await _post(worker, "/usync/reconcile/")
    assert r.status_code == 200
    await until(lambda: _outcomes_settled(worker), 30, "the worker to settle")
    assert patches(s.a, seq) == []
    assert s.a.offering_user(a_ou).username == "alice_b"


async def _row_known(worker, key):
    table = await worker.table()
    row = table["rows"].get(key)
    return row is not None and row.get("a_offering_user_uuid")


async def _outcomes_settled(worker):
    r = await worker.get("/usync/drift/")
    return r is not None and r.json()["links"]["hpc"]["drift"] == 0


async def _post(worker, path):
    import httpx
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(worker.url + path)

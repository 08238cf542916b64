"""usync history (issue 26): one user's timeline from the user index, by name and by every uuid."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx

from tests.app.harness import USYNC, LinkSpec, bridge_and_worker, until, usernames


async def usync(s, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(USYNC, *args, env=s.env, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()  # history answers 1 only when it found nothing
    return out.decode()


async def test_history_shows_a_users_facts_and_outcomes_in_order_by_any_of_their_names(setup, bridge):
    s = setup
    s.a.faults.update(reserved_usernames=["root"])
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], top="reraise_interval = 2\n")
    _, worker = await bridge_and_worker(s, bridge, path)
    a_ou, b_ou = s.add_user("alice")  # auto-created on both sites: create events
    _bob_a, bob_b = s.add_user("bob")
    for name in ("alice-1", "alice-2"):  # two changes on B, each corrected on A
        s.b.set_username(b_ou, name)
        await until(lambda: s.a.offering_user(a_ou).username == name, 60, f"A to take {name}")
    s.a.events_enabled = False
    s.a.drift_username(a_ou, "alice-drift")  # a silent drift on A, repaired by a reconcile
    s.a.events_enabled = True
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.post(worker.url + "/usync/reconcile/")).status_code == 200
    await until(lambda: s.a.offering_user(a_ou).username == "alice-2", 60, "the drift to be repaired")
    s.b.set_username(b_ou, "root")  # A refuses it

    async def refused() -> bool:
        return (await worker.table())["rows"].get("hpc:alice", {}).get("rejected_desired") == "root"
    await until(refused, 60, "A's refusal to be folded")
    s.b.set_username(bob_b, "bob-1")
    await until(lambda: usernames(s.a, s.offering_a).get("bob") == "bob-1", 60, "bob's change")

    await usync(s, "index", "--config", str(path), "--once")
    by_name = [json.loads(line) for line in (await usync(s, "history", "alice", "--config", str(path))).splitlines()]
    assert by_name and all(line["user"] == "alice" for line in by_name)  # nothing about bob
    facts = [(line["topic"], line["what"], line.get("after", {}).get("a_username")) for line in by_name]
    kinds = [what for _topic, what, _a in facts]
    assert "event" in kinds and "listed" in kinds and "rejection" in kinds
    actions = [what for topic, what, _a in facts if topic == "outcomes"]
    assert actions.count("corrected") >= 3 and "rejected" in actions  # two changes and the drift; root refused
    times = [line["at"] for line in by_name]
    assert times == sorted(times)
    listed = next(line for line in by_name if line["what"] == "listed")
    assert listed["record"]["body"]["user"]["username"] == "alice-drift"
    assert listed["after"].get("drift") is True and listed["after"].get("asks") == "alice-2", listed  # what the fold concluded
    last = next(line for line in reversed(by_name) if line["what"] == "rejection")
    assert not last["after"].get("drift") and last["after"]["b_username"] == "root"  # a refused row is left alone
    for who in (b_ou.user, a_ou.user, a_ou.uuid, b_ou.uuid):  # B's and A's user_uuid, each side's offering user
        found = [json.loads(line) for line in (await usync(s, "history", who, "--config", str(path))).splitlines()]
        assert found == by_name, who

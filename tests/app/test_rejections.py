"""A username A refuses (issue 19), through the whole worker: real Kafka, RabbitMQ, the
bridge and the simulator answering 400 for a reserved username."""

from __future__ import annotations

import time

import httpx

from streams.contract.schema import OutcomeAction
from tests.app.harness import LinkSpec, bridge_and_worker, patches, until, usernames
from tests.app.test_resilience import read_outcomes
from waldursim.rest import RESERVED_USERNAME

RERAISE = 5.0  # seconds between the re-raise timer's scans (and their settle time): default 30
WATCH = 8 * RERAISE + 5  # eight scans and a reconcile pass, each of which raised the row again before


async def test_a_refused_username_is_recorded_once_and_left_alone_until_b_changes_it(setup, bridge):
    s = setup
    a_root, b_root = s.add_user("rooty")
    others = {f"o{i}": s.add_user(f"o{i}") for i in range(4)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)],
                          top=f"reraise_interval = {RERAISE}\nrejection_retry = 3600\n")
    _, worker = await bridge_and_worker(s, bridge, path)
    config = s.config(path)
    s.a.faults.update(reserved_usernames=["root"])

    s.b.set_username(b_root, "root")
    for name, (_, b_ou) in others.items():
        s.b.set_username(b_ou, f"{name}_b")

    def root_patches() -> list:
        return [p for p in patches(s.a) if a_root.uuid in p.path]

    async def rejected_outcomes() -> list:
        return [o for o in await read_outcomes(config.kafka.outcomes_topic)
                if o.user_username == "rooty" and o.action is OutcomeAction.REJECTED]

    [outcome] = await until(rejected_outcomes, 60, "a rejected outcome for rooty")
    assert outcome.http_status == 400 and RESERVED_USERNAME in outcome.response
    assert s.a.staff_token not in outcome.response
    await until(lambda: usernames(s.a, s.offering_a) == {"rooty": "", **{n: f"{n}_b" for n in others}}, 60,
                "the other users to converge")
    assert len(root_patches()) == 1

    # no retry within the window: the re-raise timer scans 8 times, a reconcile restates
    # every row, B's username is set again to the same value; other users keep converging
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        (await client.post(worker.url + "/usync/reconcile/")).raise_for_status()
    s.b.set_username(b_root, "root")
    for round_ in range(3):
        for name, (_, b_ou) in others.items():
            s.b.set_username(b_ou, f"{name}_{round_}")
        await until(lambda: usernames(s.a, s.offering_a) == {"rooty": "", **{n: f"{n}_{round_}" for n in others}},
                    30, f"the other users to converge (round {round_})")
    await until(lambda: time.monotonic() - started >= WATCH, WATCH + 1, "the watch to end", interval=0.5)
    assert len(root_patches()) == 1
    assert len(await rejected_outcomes()) == 1

    drift = (await worker.get("/usync/drift/")).json()["links"]["hpc"]
    assert (drift["rejected"], drift["drift"]) == (1, 0)
    assert drift["rejected_users"] == [{"user": "rooty", "desired": "root", "times": 1}]
    assert 'usync_rejected_rows{link="hpc"} 1.0' in (await worker.get("/metrics")).text

    s.b.set_username(b_root, "rooty_ok")  # B changes it: corrected as any other
    await until(lambda: s.a.offering_user(a_root).username == "rooty_ok", 30, "rooty to be corrected")
    assert len(root_patches()) == 2

    async def not_rejected() -> bool:
        r = await worker.get("/usync/drift/")
        return r is not None and r.json()["links"]["hpc"]["rejected"] == 0
    await until(not_rejected, 20, "the row to count as rejected no more")

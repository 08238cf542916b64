"""Kafka going away while a worker restores its tables after a rebalance.

faust's own recovery gives each Kafka query ``broker_request_timeout`` and then lets the
worker exit (or never finish the restore). usync's recovery asks again until Kafka is
back: both workers stay up, say on /health that they wait for Kafka, and afterwards hold
the whole table and keep folding.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.app.harness import LinkSpec, bridge_and_worker, until, usernames

pytestmark = [pytest.mark.services, pytest.mark.disruptive]

# A short request timeout makes the outage outlast it many times over; the recovery
# delay holds the second worker's restore back long enough for Kafka to be stopped first.
KAFKA_EXTRA = "request_timeout = 10.0\nrecovery_delay = 12.0\n"


async def tables_state(worker) -> str | None:
    response = await worker.get("/health")
    return response.json().get("tables") if response is not None and response.status_code == 200 else None


async def test_kafka_outage_during_table_recovery(setup, bridge, brokers):
    s = setup
    n = 12
    pairs = {f"r{i:02d}": s.add_user(f"r{i:02d}") for i in range(n)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], kafka_extra=KAFKA_EXTRA)
    _, first = await bridge_and_worker(s, bridge, path)
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 60, "A to converge before the outage")

    second = s.start_worker(path)
    await until(lambda: "Executing _on_partitions_assigned" in second.log_text(), 60,
                "the second worker's assignment (its restore starts after the recovery delay)")
    await asyncio.to_thread(brokers["kafka"].stop)
    try:
        waiting = await until(lambda: _any_waiting(first, second), 90, "a worker to wait for Kafka in its restore")
        # the outage now outlasts the request timeout: faust alone would have exited here
        await until(lambda: waiting.log_text().count("Table recovery reading the") >= 2, 60,
                    "a second attempt of the restore")
    finally:
        await asyncio.to_thread(brokers["kafka"].start)

    for worker in (first, second):
        assert worker.proc.poll() is None, f"a worker exited:\n{worker.log_text()[-3000:]}"

    async def both_ready() -> bool:
        return [await tables_state(w) for w in (first, second)] == ["ready", "ready"]
    await until(both_ready, 120, "both workers' tables to be restored")

    async def whole_table() -> bool:
        rows: dict = {}
        for worker in (first, second):
            rows.update((await worker.table())["rows"])
        return {r["user_username"]: r.get("a_username") for r in rows.values()} == want
    await until(whole_table, 60, "the two workers' tables to hold every row")

    # folding goes on after the restore: a change on B reaches A
    name, (_, b_ou) = next(iter(pairs.items()))
    s.b.set_username(b_ou, f"{name}_after")
    # after a long outage the bridge's producer, the route and the correct stage each come back
    # on their own backoff (16-32 s into an outage): in the full suite this took over 90 s once
    await until(lambda: usernames(s.a, s.offering_a)[name] == f"{name}_after", 180, "a change after the outage")
    for worker in (first, second):
        assert worker.proc.poll() is None, f"a worker exited:\n{worker.log_text()[-3000:]}"


async def _any_waiting(*workers):
    for worker in workers:
        if await tables_state(worker) == "waiting-for-kafka":
            return worker
    return None

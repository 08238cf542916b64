"""A queue deleted on the broker loses the events published before the bridge re-registers
(unroutable at Waldur's side); ``usync bridge`` then runs one reconcile pass of the links
touching that offering at once, so A equals B again without waiting for the reconcile
interval (3600 s here). Bridge and two workers as subprocesses, real brokers, the simulator.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pytest

from tests.app.harness import until, usernames
from tests.e2e.harness import diagnose, dump_logs
from tests.support.services import RABBITMQ

pytestmark = pytest.mark.services

AUTH = (RABBITMQ.admin_user, RABBITMQ.admin_password)


async def test_a_deleted_queue_is_repaired_by_the_triggered_reconcile(pipeline):
    p = pipeline
    await p.start()
    assert p.config.reconcile_interval >= 3600
    for ou in p.b_users:
        p.b.set_username(ou, f"{p.b.store.users[ou.user].username}-before")
    await until(p.a_equals_b, 90, "A to equal B before the queue is lost", interval=0.5)

    off_a, off_b = p.links[0]
    [queue] = [q for q in p.b.store.queues.values() if q.offering == off_b.uuid]
    deleted = time.time()
    async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
        url = f"{RABBITMQ.management_url}/api/queues/{quote(queue.vhost, safe='')}/{quote(queue.name, safe='')}"
        (await client.delete(url)).raise_for_status()
    # No await between the deletion and these changes: the simulator (this loop) cannot
    # answer the bridge's re-registration before they are published, so they are lost.
    lost_users = [ou for ou in p.b_users if ou.offering == off_b.uuid]
    for ou in lost_users:
        p.b.set_username(ou, f"{p.b.store.users[ou.user].username}-lost")
    await p.b.publisher.drain()
    unroutable = [m for t, _v, q, m, outcome in p.b.publisher.sent if t >= deleted and q == queue.name and outcome == "unroutable"]
    assert unroutable, "the changes were published while the queue was missing"

    started = time.monotonic()
    try:
        await until(p.a_equals_b, 120, "A to equal B after the lost window", interval=0.5)
    except AssertionError:
        dump_logs(p)
        raise AssertionError(f"A differs: {p.a_b_difference()}\n{await diagnose(p)}") from None
    repaired = time.monotonic() - started
    # B's four offerings share one subscription (one credential): re-registering it declares
    # all four queues again, so its pass covers every link touching them, once. A can equal B
    # before the pass has logged its last link (that link had nothing to repair).
    bridge = p.running("bridge")[0]
    await until(lambda: all(f"reconciled link hpc{i}:" in bridge.tail(10**6) for i in range(len(p.links))), 30,
                "the triggered pass to log every link")
    bridge_log = bridge.tail(10**6)
    for i in range(len(p.links)):
        assert bridge_log.count(f"reconciled link hpc{i}:") == 1, f"one triggered pass of link hpc{i}"
    assert "Task was destroyed" not in bridge_log
    assert usernames(p.a, off_a) == usernames(p.b, off_b)
    print(f"\n{len(unroutable)} events unroutable after the deletion; A equal to B {repaired:.1f} s later "
          f"(reconcile_interval {p.config.reconcile_interval:.0f} s)")

"""Each fault observably happens at its configured rate. Tolerance: ±5 percentage
points of the configured rate (the draws are seeded, so each run is reproducible; the
tolerance is what an unlucky seed could cost: about 3 standard deviations at N=1000).
Event faults are observed on the real broker, API faults from the client's side."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import msgspec
import pika

from tests.support.services import RABBITMQ
from waldursim import Federation, Site

TOLERANCE = 0.05


def within(observed: int, total: int, rate: float) -> bool:
    return abs(observed / total - rate) <= TOLERANCE


async def calls(site: Site, n: int, timeout: float = 5.0) -> list[int | str]:
    """n sequential GETs; status codes, or "timeout" when the client gave up."""
    out: list[int | str] = []
    async with httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Token {site.staff_token}"},
                                 timeout=timeout) as c:
        for _ in range(n):
            try:
                r = await c.get("marketplace-offering-users/")
                out.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["Retry-After"] == "3"
            except httpx.TimeoutException:
                out.append("timeout")
    return out


async def test_api_errors_and_throttling_at_rate(sim_offline: Federation) -> None:
    site = sim_offline.add_site("a")
    await sim_offline.start()
    # Switched on through the admin endpoint, as a benchmark would.
    async with httpx.AsyncClient() as admin:
        r = await admin.put(site.admin_url + "faults", json={"error_rate": 0.2, "throttle_rate": 0.1,
                                                               "retry_after": 3, "seed": 7})
        assert r.status_code == 200 and r.json()["error_rate"] == 0.2
    statuses = Counter(await calls(site, 1000))
    errors = sum(v for k, v in statuses.items() if k in (500, 502, 503))
    assert set(statuses) <= {200, 429, 500, 502, 503}
    assert within(errors, 1000, 0.2), statuses
    assert within(statuses[429], 1000, 0.1), statuses
    assert all(statuses[s] > 0 for s in (500, 502, 503))  # all three error kinds occur
    # The call log saw exactly what the client saw.
    assert site.calls.statuses[429] == statuses[429]
    assert site.calls.count("GET /api/marketplace-offering-users/") == 1000
    assert sum(1 for c in site.calls.log if c.fault == "error") == errors
    # Off again: all calls succeed.
    async with httpx.AsyncClient() as admin:
        assert (await admin.delete(site.admin_url + "faults")).status_code == 200
    assert set(await calls(site, 50)) == {200}


async def test_api_timeouts_at_rate(sim_offline: Federation) -> None:
    site = sim_offline.add_site("a")
    await sim_offline.start()
    site.faults.update(timeout_rate=0.25, timeout_seconds=30, seed=3)
    # Batches of concurrent calls, so the hung ones cost one client timeout per batch.
    async with httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Token {site.staff_token}"},
                                 timeout=httpx.Timeout(1.0, pool=None)) as c:
        async def one() -> int | str:
            try:
                return (await c.get("marketplace-offering-users/")).status_code
            except httpx.TimeoutException:
                return "timeout"

        started = time.monotonic()
        outcomes: Counter[int | str] = Counter()
        for _ in range(5):
            outcomes.update(await asyncio.gather(*(one() for _ in range(60))))
    assert set(outcomes) <= {200, "timeout"}
    # N=300: ±5 points is ~2 standard deviations; the seed makes it deterministic.
    assert within(outcomes["timeout"], 300, 0.25), outcomes
    assert outcomes["timeout"] == site.faults.stats["timeout"]
    assert time.monotonic() - started < 15


async def test_api_latency(sim_offline: Federation) -> None:
    site = sim_offline.add_site("a")
    await sim_offline.start()
    site.faults.update(latency=0.05, latency_jitter=0.02)
    async with httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Token {site.staff_token}"}) as c:
        for _ in range(10):
            t0 = time.monotonic()
            assert (await c.get("marketplace-offering-users/")).status_code == 200
            assert time.monotonic() - t0 >= 0.05
    assert all(call.duration >= 0.05 for call in site.calls.log)


async def subscribed_site(federation: Federation, **faults: float) -> tuple[Site, object, object]:
    site = federation.add_site("b")
    await federation.start()
    offering = site.create_offering(site.create_customer(), type="Marketplace.Basic")
    manager = site.create_user("mgr")
    site.add_offering_manager(manager, offering)
    sub = await site.subscribe(manager, offering)
    site.faults.update(seed=11, **faults)
    return site, offering, sub


def read_queue(sub) -> list[tuple[str, dict]]:
    params = pika.ConnectionParameters("127.0.0.1", RABBITMQ.amqp_port, sub.vhost, pika.PlainCredentials(sub.login, sub.passcode))
    out = []
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(sub.queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers["x-message-id"], json.loads(body)))


async def test_event_drop_at_rate(sim_federation: Federation) -> None:
    site, offering, sub = await subscribed_site(sim_federation, drop=0.3)
    users = [site.create_user(f"u{i}") for i in range(1000)]
    for u in users:
        site.create_offering_user(offering, u)
    await site.publisher.drain()
    received = await asyncio.to_thread(read_queue, sub)
    dropped = {o.message.offering_user_uuid for o in site.outgoing if o.fault == "drop"}
    assert within(1000 - len(received), 1000, 0.3)
    assert len(received) == 1000 - len(dropped)
    assert not dropped & {p["offering_user_uuid"] for _, p in received}


async def test_event_duplicate_at_rate(sim_federation: Federation) -> None:
    site, offering, sub = await subscribed_site(sim_federation, duplicate=0.2)
    for i in range(1000):
        site.create_offering_user(offering, site.create_user(f"u{i}"))
    await site.publisher.drain()
    received = await asyncio.to_thread(read_queue, sub)
    per_id = Counter(mid for mid, _ in received)
    assert set(per_id.values()) <= {1, 2} and len(per_id) == 1000
    assert within(sum(1 for v in per_id.values() if v == 2), 1000, 0.2)


async def test_event_delay_at_rate(sim_federation: Federation) -> None:
    site, offering, sub = await subscribed_site(sim_federation, delay=0.2, delay_seconds=1.5)
    for i in range(500):
        site.create_offering_user(offering, site.create_user(f"u{i}"))
    await site.publisher.drain()  # waits for the delayed ones too
    received = [p["offering_user_uuid"] for _, p in await asyncio.to_thread(read_queue, sub)]
    delayed = {o.message.offering_user_uuid for o in site.outgoing if o.fault == "delay"}
    assert len(received) == 500 and within(len(delayed), 500, 0.2)
    # Observable on the broker: the delayed events arrive after all the others.
    assert set(received[-len(delayed):]) == delayed


async def test_drift_changes_usernames_without_events(sim_federation: Federation) -> None:
    site, offering, sub = await subscribed_site(sim_federation)
    ous = [site.create_offering_user(offering, site.create_user(f"u{i}"), username=f"name{i}") for i in range(100)]
    await site.publisher.drain()
    submitted = site.publisher.stats.submitted
    async with httpx.AsyncClient() as admin:
        r = await admin.post(site.admin_url + "drift", json={"offering_uuid": offering.uuid, "count": 10})
        assert r.status_code == 200 and len(r.json()) == 10
        one = await admin.post(site.admin_url + "drift", json={"offering_user_uuid": ous[0].uuid, "username": "x"})
        assert one.json() == [{"uuid": ous[0].uuid, "username": "x"}]
    site.drift_username(ous[1], "y")
    changed = sum(1 for i, ou in enumerate(ous) if ou.username != f"name{i}")
    assert 10 <= changed <= 12
    assert site.publisher.stats.submitted == submitted
    received = await asyncio.to_thread(read_queue, sub)
    assert [p["action"] for _, p in received] == ["create"] * 100


async def test_publisher_rate_limit(sim_federation: Federation) -> None:
    site, offering, sub = await subscribed_site(sim_federation)
    site.publisher.rate = 200.0
    t0 = time.monotonic()
    for i in range(300):
        site.create_offering_user(offering, site.create_user(f"u{i}"))
    await site.publisher.drain()
    # The bucket holds one second's worth (200) at most, however long the publisher was idle
    # before: a full bucket and 100 more messages at 200/s take at least ~0.5 s.
    assert time.monotonic() - t0 >= 0.45
    times = [t for t, *_ in site.publisher.sent]
    assert len(times) == 300 and (times[-1] - times[0]) >= 0.4


async def test_publisher_survives_an_unreachable_broker(sim_federation: Federation) -> None:
    """Events saved while the broker cannot be reached are retried with backoff and all
    delivered, in order, once it can (the outage is simulated by pointing the publisher
    at a closed port: the shared RabbitMQ itself must never be stopped by these tests)."""
    site, offering, sub = await subscribed_site(sim_federation)
    real = site.publisher.broker
    assert real is not None
    site.publisher.backoff = (0.05, 0.2)
    site.publisher.broker = msgspec.structs.replace(real, amqp_port=1)
    ous = [site.create_offering_user(offering, site.create_user(f"u{i}")) for i in range(5)]
    async def failures(at_least: int) -> None:
        while site.publisher.stats.connection_failures < at_least:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(failures(3), 10)
    assert site.publisher.stats.pending == 5
    site.publisher.broker = real
    await site.publisher.drain(10)
    received = await asyncio.to_thread(read_queue, sub)
    assert [p["offering_user_uuid"] for _, p in received] == [ou.uuid for ou in ous]

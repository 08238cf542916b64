"""A subscription's queue deleted on the broker (Waldur re-creating a subscription, an
operator cleaning a vhost): over every transport the bridge re-registers through the Waldur
API within seconds, consumes the re-created queue, and asks for the lost window to be
repaired (``on_resubscribed``). Real RabbitMQ, real Kafka, the simulator over HTTP.

Two ways to lose the queue: deleted under a live consumer (the broker cancels it: STOMP
ERROR "Server cancelled subscription", AMQP basic.cancel), and deleted while the bridge is
reconnecting (the SUBSCRIBE is refused: web-STOMP closes the connection without an ERROR
frame, STOMP and AMQP answer NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from urllib.parse import quote

import httpx
import pytest

from bridges.app import Bridge
from tests.bridge.harness import TopicReader, bridge_config, populate, wait_for
from tests.bridge.test_bridge_relay import TRANSPORTS
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401

pytestmark = pytest.mark.services

MGMT = f"{RABBITMQ.management_url}/api"
AUTH = (RABBITMQ.admin_user, RABBITMQ.admin_password)
CREATE_QUEUE = "POST /api/event-subscriptions/{uuid}/create_queue/"
RENAME_EVERY = 0.05  # one username change on B every 50 ms while the queue is lost and found


async def delete_queue(vhost: str, queue: str) -> None:
    async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
        (await client.delete(f"{MGMT}/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")).raise_for_status()


async def close_connections(vhost: str, login: str) -> int:
    """Force-close ``login``'s connections to ``vhost`` (the bridge's; it reconnects)."""
    async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
        async def listed() -> list[dict]:
            found = (await client.get(f"{MGMT}/vhosts/{quote(vhost, safe='')}/connections")).json()
            return [c for c in found if c.get("user") == login]
        connections = await wait_for(listed, 30, f"the bridge's connection in vhost {vhost}", interval=0.2)
        for connection in connections:
            (await client.delete(f"{MGMT}/connections/{quote(connection['name'], safe='')}")).raise_for_status()
        return len(connections)


def create_queue_calls(site, since: float) -> list[float]:
    return [c.time for c in site.calls.log if c.endpoint == CREATE_QUEUE and c.status in (200, 201) and c.time >= since]


class HealthWatch:
    """Samples /health/ready's components every 5 ms: what the operator saw meanwhile."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.details: list[tuple[str, str, str]] = []
        self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            for name, component in self.bridge.health.components.items():
                sample = (name, component.state, component.detail)
                if not self.details or self.details[-1] != sample:
                    self.details.append(sample)
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self.task.cancel()


@pytest.mark.parametrize("lost", ["consumed", "while-reconnecting"])
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_deleted_queue_is_registered_again_within_seconds(sim_federation, kafka_bootstrap, rabbitmq, transport,
                                                                  lost, caplog):
    caplog.set_level(logging.WARNING)
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=1, users=20)
    config = bridge_config(world, TRANSPORTS[transport], kafka_bootstrap, environ={})
    repairs: list[tuple[str, list[str], float]] = []

    async def on_resubscribed(site: str, offerings: list[str]) -> None:
        repairs.append((site, offerings, time.monotonic()))

    bridge = Bridge(config, health_port=0, on_resubscribed=on_resubscribed)
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    site_b = sim_federation["b"]
    users = world.offering_users[world.offerings["b"][0]]
    try:
        await wait_for(lambda: task.done() or (bridge.health.ready and len(bridge.relays) == 2), 60, "bridge to connect")
        relay = next(r for r in bridge.relays if r.site == "b")
        vhost, queue = relay.credential.vhost, relay.credential.queues[0]

        async with TopicReader(kafka_bootstrap, config.kafka.events_topic) as reader:
            for i, ou in enumerate(users):  # the queue works before it is lost
                site_b.set_username(ou, f"before-{i}")
            await site_b.publisher.drain()

            async def first_arrived() -> bool:
                return len(await reader.read_until(len(users), 1)) >= len(users)
            await wait_for(first_arrived, 60, "the first events in Kafka")

            renames = asyncio.create_task(rename_forever(site_b, users))
            watch = HealthWatch(bridge)
            await asyncio.sleep(1.0)  # scenario timing: events flow before the loss
            if lost == "while-reconnecting":
                assert await close_connections(vhost, relay.credential.login) >= 1
            deleted_wall, deleted = time.time(), time.monotonic()
            await delete_queue(vhost, queue)

            await wait_for(lambda: create_queue_calls(site_b, deleted_wall), 10, "re-registration (create_queue)")
            registered = create_queue_calls(site_b, deleted_wall)[0] - deleted_wall
            await wait_for(lambda: repairs, 10, "the new subscription (on_resubscribed)")
            gap = repairs[0][2] - deleted
            await asyncio.sleep(2.0)  # scenario timing: events flow after the recovery
            renames.cancel()
            watch.stop()
            await site_b.publisher.drain()

            # Confirmed before the queue was declared again: routed into the deleted queue
            # (its confirm raced the deletion), gone with it; the reconcile repairs those too.
            registered_wall = create_queue_calls(site_b, deleted_wall)[0]
            sent = [(t, m, outcome) for t, _v, q, m, outcome in site_b.publisher.sent if t >= deleted_wall and q == queue]
            routed = {m for t, m, outcome in sent if outcome == "confirmed" and t >= registered_wall}
            lost_events = sum(1 for t, _m, outcome in sent if outcome != "confirmed" or t < registered_wall)

            async def arrived() -> bool:
                await reader.read_until(len(reader.records) + 1, timeout=0.5)
                return {e.event_id for e in reader.envelopes()} >= routed
            await wait_for(arrived, 60, f"all {len(routed)} events routed after the re-registration in Kafka")
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 60)

    print(f"\n{transport}/{lost}: re-registered {registered:.2f} s and subscribed {gap:.2f} s after the deletion; "
          f"{lost_events} events unroutable meanwhile, {len(routed)} routed afterwards all in Kafka")
    assert registered < 10
    assert gap < 7, "subscribed on the 1 s backoff, not the credentials' 15 s one (whose first delay is at least 7.5 s)"
    assert len(routed) > 10, "events were published after the re-registration"
    assert repairs[0][:2] == ("b", world.offerings["b"]), "the repair names the site and its offerings"
    assert len(repairs) == 1
    missing = [d for name, state, d in watch.details if name == relay.name and state == "disconnected" and queue in d]
    assert missing, f"/health/ready never named the missing queue: {watch.details}"
    assert bridge.metrics.queue_recoveries.labels("b")._value.get() == 1
    gc.collect()
    await asyncio.sleep(0)
    assert "Task was destroyed" not in caplog.text
    bridge_errors = [r for r in caplog.records if r.levelno >= logging.ERROR
                     and r.name.split(".")[0] in ("usync", "bridges", "asyncio")]
    assert not bridge_errors, caplog.text


async def rename_forever(site, users: list[str]) -> None:
    i = 0
    while True:
        site.set_username(users[i % len(users)], f"during-{i}")
        i += 1
        await asyncio.sleep(RENAME_EVERY)

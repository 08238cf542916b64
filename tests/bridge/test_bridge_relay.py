"""The bridge relays every simulated Waldur event into Kafka, in per-queue order,
over each transport (tests against real RabbitMQ, real Kafka and the simulator)."""

from __future__ import annotations

import asyncio

import pytest

from bridges.app import Bridge
from tests.bridge.harness import TopicReader, bridge_config, last_occurrences, per_queue, populate, rename_all, wait_for
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401

pytestmark = pytest.mark.services

TRANSPORTS = {
    "web-stomp": RABBITMQ.web_stomp_url,
    "stomp": RABBITMQ.stomp_url,
    "amqp": f"amqp://{RABBITMQ.host}:{RABBITMQ.amqp_port}",
}


async def start_bridge(config) -> tuple[Bridge, asyncio.Task]:
    bridge = Bridge(config, health_port=0)
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    await wait_for(lambda: task.done() or (bridge.health.ready and len(bridge.relays) == 2), 60, "bridge to connect")
    if task.done():
        task.result()
    return bridge, task


async def stop_bridge(bridge: Bridge, task: asyncio.Task) -> None:
    bridge.stop()
    await asyncio.wait_for(task, 60)


def published(federation) -> list[tuple[str, str]]:
    return [(o.message.queue, o.message.message_id)
            for site in federation.sites.values() for o in site.outgoing if o.fault is None]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_ten_thousand_events_arrive_in_per_queue_order(sim_federation, kafka_bootstrap, rabbitmq, transport):
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=2, users=250)  # 1,000 offering users
    config = bridge_config(world, TRANSPORTS[transport], kafka_bootstrap, environ={})
    bridge, task = await start_bridge(config)

    for round_ in range(5):  # each rename on a Slurm offering publishes update + username_set
        rename_all(world, f"r{round_}-")
    await sim_federation.drain()
    expected = published(sim_federation)
    assert len(expected) == 10_000

    async with TopicReader(kafka_bootstrap, config.kafka.events_topic) as reader:
        await reader.read_until(len(expected), timeout=120)
    await stop_bridge(bridge, task)

    got = [(e.queue, e.event_id) for e in reader.envelopes()]
    duplicates = len(got) - len(set(got))
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))} events"
    assert duplicates <= sum(s.value for s in bridge.metrics.redelivered.collect()[0].samples if s.name.endswith("_total"))
    relayed = {queue: last_occurrences(ids) for queue, ids in per_queue(got).items()}
    assert relayed == per_queue(expected)

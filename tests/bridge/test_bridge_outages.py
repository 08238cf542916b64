"""Pulp's broker-reconnect plan, for RabbitMQ and for Kafka separately:
(1) the bridge starts while the broker is down and the broker comes 15 s later;
(2) the broker stops for 30 s mid-stream and comes back.
Every event arrives and the bridge never exits on its own."""

from __future__ import annotations

import asyncio

import pytest

from tests.bridge.harness import TopicReader, bridge_config, populate, wait_for
from tests.bridge.test_bridge_relay import published
from bridges.app import Bridge
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401

pytestmark = [pytest.mark.services, pytest.mark.disruptive]

LATE_START = 15.0  # scenario timing from the test plan, not synchronisation
OUTAGE = 30.0


async def world_and_bridge(federation, kafka_bootstrap):
    federation.add_site("a")
    federation.add_site("b")
    await federation.start()
    world = populate(federation, offerings=2, users=50)
    config = bridge_config(world, RABBITMQ.web_stomp_url, kafka_bootstrap, environ={})
    bridge = Bridge(config, health_port=0)
    return world, config, bridge


def rename_everyone(federation, world, tag: str) -> None:
    for site in federation.sites.values():
        for offering in world.offerings[site.name]:
            for ou in world.offering_users[offering]:
                site.set_username(ou, f"{tag}-{ou[:12]}")


async def assert_everything_arrives(federation, topic: str, kafka_bootstrap: str, timeout: float = 240) -> None:
    await federation.drain(timeout=timeout)
    expected = set(published(federation))
    async with TopicReader(kafka_bootstrap, topic) as reader:
        async def arrived() -> bool:
            await reader.read_until(len(reader.records) + 1, timeout=1)
            return {(e.queue, e.event_id) for e in reader.envelopes()} >= expected
        await wait_for(arrived, timeout, f"all {len(expected)} published events in Kafka")


@pytest.mark.parametrize("broker", ["rabbitmq", "kafka"])
async def test_bridge_started_while_the_broker_is_down(broker, sim_federation, kafka_bootstrap, rabbitmq, brokers):
    world, config, bridge = await world_and_bridge(sim_federation, kafka_bootstrap)
    brokers[broker].stop()
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    await asyncio.sleep(LATE_START)
    assert not task.done() and not bridge.health.ready
    brokers[broker].start()
    await wait_for(lambda: bridge.health.ready and len(bridge.relays) == 2, 240, "the bridge to connect")

    rename_everyone(sim_federation, world, "late")
    await assert_everything_arrives(sim_federation, config.kafka.events_topic, kafka_bootstrap)
    assert not task.done()
    bridge.stop()
    await asyncio.wait_for(task, 60)


@pytest.mark.parametrize("broker", ["rabbitmq", "kafka"])
async def test_broker_gone_for_thirty_seconds_mid_stream(broker, sim_federation, kafka_bootstrap, rabbitmq, brokers):
    world, config, bridge = await world_and_bridge(sim_federation, kafka_bootstrap)
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    await wait_for(lambda: bridge.health.ready and len(bridge.relays) == 2, 60, "the bridge to connect")
    for site in sim_federation.sites.values():
        site.publisher.rate = 200  # still publishing when the broker goes

    rename_everyone(sim_federation, world, "before")
    async with TopicReader(kafka_bootstrap, config.kafka.events_topic) as reader:
        await reader.read_until(100, timeout=60)
    brokers[broker].stop()
    await asyncio.sleep(OUTAGE)
    assert not task.done()
    brokers[broker].start()
    rename_everyone(sim_federation, world, "after")

    await assert_everything_arrives(sim_federation, config.kafka.events_topic, kafka_bootstrap)
    await wait_for(lambda: bridge.health.ready, 240, "the bridge to report ready again")
    assert not task.done()
    bridge.stop()
    await asyncio.wait_for(task, 60)

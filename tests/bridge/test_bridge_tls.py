"""The bridge relays simulated Waldur events into Kafka over each TLS transport: web-STOMP
over ``wss://``, STOMP over ``stomp+ssl://`` and ``amqps://``, RabbitMQ's TLS listeners
serving the test CA's certificate (services/rabbitmq.sh) and the bridge trusting that CA
through ``broker_ca_file``; the registration goes to the simulator over ``https://``. A
broker certificate from a CA the site's settings do not name is refused, with the reason
on ``/health``, and the relay keeps retrying."""

from __future__ import annotations

import asyncio

import pytest

from bridges.app import Bridge
from tests.bridge.harness import TopicReader, bridge_config, populate, rename_all, wait_for
from tests.bridge.test_bridge_relay import published, start_bridge, stop_bridge
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401
from tests.support.tls import broker_pki

pytestmark = pytest.mark.services


@pytest.mark.parametrize("scheme", ["wss", "stomp+ssl", "amqps"])
async def test_events_arrive_over_each_tls_transport(sim_federation, kafka_bootstrap, rabbitmq, scheme):  # noqa: F811
    pki = broker_pki()
    sim_federation.tls = pki.server.server_context()  # the API over https:// too
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=1, users=50)
    trust = (f'ca_file = "{pki.ca}"', f'broker_ca_file = "{pki.ca}"')
    config = bridge_config(world, RABBITMQ.tls_urls[scheme], kafka_bootstrap, environ={}, site_lines=trust)
    bridge, task = await start_bridge(config)
    try:
        rename_all(world, "tls-")
        await sim_federation.drain()
        expected = published(sim_federation)
        assert len(expected) == 200
        async with TopicReader(kafka_bootstrap, config.kafka.events_topic) as reader:
            await reader.read_until(len(expected), timeout=120)
    finally:
        await stop_bridge(bridge, task)
    assert {(e.queue, e.event_id) for e in reader.envelopes()} == set(expected)


async def test_a_broker_certificate_from_an_unnamed_ca_is_refused_and_retried(sim_federation, kafka_bootstrap,  # noqa: F811
                                                                               rabbitmq):
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=1, users=1)
    config = bridge_config(world, RABBITMQ.tls_urls["wss"], kafka_bootstrap, environ={})  # system CAs only
    bridge = Bridge(config, health_port=0)
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    try:
        def refused() -> list[str]:
            return [c.detail for name, c in bridge.health.components.items()
                    if name.startswith("a/") and "TLS handshake with wss://" in c.detail]
        details = await wait_for(refused, 60, "the relay's /health to say the certificate was refused")
        # RabbitMQ sends its CA along: OpenSSL says so, since no configured CA is that one
        assert "refused: certificate verify failed: self-signed certificate in certificate chain" in details[0]
        assert world.tokens["a"] not in details[0]
        reconnects = _reconnects(bridge, "a")
        await wait_for(lambda: _reconnects(bridge, "a") > reconnects, 60, "another attempt (retrying with backoff)")
        assert not task.done()
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 60)


def _reconnects(bridge: Bridge, site: str) -> float:
    return sum(s.value for s in bridge.metrics.reconnects.collect()[0].samples
               if s.name.endswith("_total") and s.labels["site"] == site)

"""Arbitrary bytes and arbitrary JSON through the real broker: each message lands in the
events topic or the DLQ (with its raw bytes), and the bridge keeps running."""

from __future__ import annotations

import json
import uuid

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contract.schema import PayloadError, decode_payload
from tests.bridge.harness import TopicReader, bridge_config, populate, wait_for
from tests.bridge.test_bridge_relay import start_bridge, stop_bridge
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401

pytestmark = pytest.mark.services

HEX = st.text("0123456789abcdef", min_size=32, max_size=32)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Near-valid events: the shape Waldur sends, with any field possibly wrong or missing.
event_like = st.fixed_dictionaries(
    {},
    optional={"action": st.sampled_from(["create", "update", "delete", "username_set", "weird"]) | json_values,
              "offering_user_uuid": HEX | json_values, "user_uuid": HEX | json_values,
              "username": st.text(max_size=10) | json_values, "state": st.integers(0, 12) | st.text(max_size=8)},
)
# Valid events with arbitrary extra keys, so every run exercises the relayed path too.
valid_events = st.fixed_dictionaries(
    {"action": st.sampled_from(["create", "update", "delete", "username_set", "brand_new"]),
     "offering_user_uuid": HEX, "user_uuid": HEX},
    optional={"username": st.text(max_size=10), "state": st.integers(1, 10), "extra": json_values},
)
bodies = (
    st.binary(max_size=512)
    | valid_events.map(lambda v: json.dumps(v).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | event_like.map(lambda v: json.dumps(v).encode())
)


def generated_bodies() -> list[bytes]:
    """Hypothesis draws the inputs; the broker round trip is too slow to run per example."""
    drawn: list[bytes] = []

    @settings(max_examples=300, database=None, deadline=None)
    @given(bodies)
    def collect(body: bytes) -> None:
        drawn.append(body)

    collect()
    return drawn


def is_valid(body: bytes) -> bool:
    try:
        decode_payload(body)
        return True
    except PayloadError:
        return False


async def test_every_message_reaches_the_events_topic_or_the_dlq(sim_federation, kafka_bootstrap, rabbitmq):
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=1, users=1)
    config = bridge_config(world, RABBITMQ.stomp_url, kafka_bootstrap, environ={})
    bridge, task = await start_bridge(config)
    credential = bridge.relays[0].credential
    queue = credential.queues[0]

    drawn = generated_bodies()
    ids = [uuid.uuid4().hex for _ in drawn]
    params = pika.ConnectionParameters("127.0.0.1", RABBITMQ.amqp_port, credential.vhost, pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, message_id in zip(drawn, ids):
            channel.basic_publish("", queue, body, pika.BasicProperties(headers={"x-message-id": message_id}))

    async with TopicReader(kafka_bootstrap, config.kafka.events_topic) as events, \
            TopicReader(kafka_bootstrap, config.kafka.dlq_topic) as dlq:
        async def all_landed() -> bool:
            await events.read_until(len(events.records) + 1, timeout=0.5)
            await dlq.read_until(len(dlq.records) + 1, timeout=0.5)
            return len(events.records) + len(dlq.records) >= len(drawn)
        await wait_for(all_landed, 60, "every message in the events topic or the DLQ")

    assert not task.done() and bridge.health.ready
    await stop_bridge(bridge, task)
    relayed = {e.event_id: e for e in events.envelopes()}
    dead = {d.event_id: d for d in dlq.dead_letters()}
    for body, message_id in zip(drawn, ids):
        if is_valid(body):
            assert message_id in relayed and message_id not in dead
            assert relayed[message_id].body == decode_payload(body)
        else:
            assert message_id in dead and message_id not in relayed
            assert dead[message_id].raw == body and dead[message_id].reason
    assert len(dead) > 50 and len(relayed) > 0, "the generator should produce both kinds"

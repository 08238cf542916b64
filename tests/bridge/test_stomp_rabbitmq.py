"""The STOMP client over WebSocket (web-STOMP) and plain TCP, against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid

import pytest

from bridges.transports.base import (
    AuthenticationError,
    ConnectionLost,
    QueueNotFound,
    TransportTimeout,
    SubscriptionRefused,
)
from bridges.transports.registry import open_connection
from bridges.transports.stomp import StompConnection
from tests.support.services import RABBITMQ

pytestmark = pytest.mark.services


@pytest.fixture(params=["ws", "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_open_source_picks_stomp(kind: str, broker) -> None:
    assert isinstance(open_connection(broker.url(kind), "u", "p", "/"), StompConnection)


async def test_consume_in_order_with_individual_acks(kind, queue, broker, connect) -> None:
    n = 2000
    await broker.publish(queue, n)
    source = await connect(kind)
    await source.subscribe(queue, prefetch=200)

    seen = []
    async with asyncio.timeout(60):
        async for msg in source.messages():
            seen.append(msg)
            await source.ack(msg)
            if len(seen) == n:
                break

    assert [m.body for m in seen] == [broker.body(i) for i in range(n)]
    assert [m.headers["x-message-id"] for m in seen] == [broker.message_id(i) for i in range(n)]
    assert len({m.ack_id for m in seen}) == n
    assert not any(m.redelivered for m in seen)
    first = seen[0]
    assert first.queue == queue
    assert first.headers["content-type"] == "application/json"
    assert first.headers["persistent"] == "true"
    assert first.headers["amqp-message-id"] == "amqp-0"

    await source.close()  # DISCONNECT's receipt: every ACK before it was processed
    assert [m async for m in source.messages()] == []  # a closed source's stream ends
    await broker.wait_for_queue(queue, consumers=0, messages=0)


async def test_unacked_messages_are_redelivered_after_disconnect(kind, queue, broker, connect) -> None:
    await broker.publish(queue, 20)
    first = await connect(kind)
    await first.subscribe(queue, prefetch=5)
    held = await broker.take(first, 5)
    assert [m.body for m in held] == [broker.body(i) for i in range(5)]
    await first.close()  # without acking

    second = await connect(kind)
    await second.subscribe(queue, prefetch=50)
    again = await broker.take(second, 20)
    assert [m.body for m in again] == [broker.body(i) for i in range(20)]
    assert [m.redelivered for m in again] == [True] * 5 + [False] * 15
    for msg in again:
        await second.ack(msg)
    await second.close()
    assert await broker.depth(queue) == 0


async def test_lost_connection_raises_promptly_and_reconnects(kind, queue, broker, connect, proxy_factory) -> None:
    await broker.publish(queue, 10)
    proxy = await proxy_factory(kind)
    source = await connect(kind, url=proxy.url(kind))
    await source.subscribe(queue, prefetch=5)
    held = await broker.take(source, 5)

    proxy.cut()  # the broker host vanishes: a reset, no DISCONNECT, no ERROR
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(10):
            await anext(source.messages())
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionLost):
        await source.ack(held[0])

    await source.connect()  # the same source object, a new connection
    await source.subscribe(queue, prefetch=20)
    again = await broker.take(source, 10)
    assert [m.body for m in again] == [broker.body(i) for i in range(10)]
    assert [m.redelivered for m in again[:5]] == [True] * 5
    with pytest.raises(ConnectionLost, match="earlier connection"):
        await source.ack(held[0])  # its delivery tag died with the old connection
    for msg in again:
        await source.ack(msg)
    await source.close()
    assert await broker.depth(queue) == 0


async def test_dead_peer_is_detected_by_heartbeat(kind, queue, connect, proxy_factory) -> None:
    proxy = await proxy_factory(kind)
    source = await connect(kind, url=proxy.url(kind), heartbeat=1.0)
    await source.subscribe(queue, prefetch=5)
    proxy.freeze()  # a black hole: no data, no FIN, no RST
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="heart-beat"):
        async with asyncio.timeout(20):
            await anext(source.messages())
    assert time.monotonic() - started < 6  # 2.5 negotiated intervals plus a check tick


async def test_prefetch_bounds_unacked_messages(kind, queue, broker, connect) -> None:
    await broker.publish(queue, 100)
    source = await connect(kind)
    await source.subscribe(queue, prefetch=10)
    got = []

    async def consume() -> None:
        async for msg in source.messages():
            got.append(msg)

    consumer = asyncio.create_task(consume())
    try:
        await broker.wait_until(lambda: len(got) == 10)
        await broker.wait_for_queue(queue, messages_unacknowledged=10, messages_ready=90)
        assert len(got) == 10
        await source.ack(got[0])  # one slot frees up: exactly one more arrives
        await broker.wait_until(lambda: len(got) == 11)
        await broker.wait_for_queue(queue, messages_unacknowledged=10, messages_ready=89)
        assert len(got) == 11
    finally:
        consumer.cancel()


async def test_nack_requeues(kind, queue, broker, connect) -> None:
    await broker.publish(queue, 2)
    source = await connect(kind)
    await source.subscribe(queue, prefetch=1)
    [msg] = await broker.take(source, 1)
    await source.nack(msg)
    [again] = await broker.take(source, 1)
    assert again.body == msg.body and again.redelivered
    await source.ack(again)


async def test_bad_passcode_is_an_authentication_error_without_the_passcode(kind, broker, connect, vhost, caplog) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await connect(kind, passcode=secret)
    exc = info.value
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)
    assert "refused" in str(exc).lower()
    assert secret not in text
    assert secret not in caplog.text
    assert secret not in repr(open_connection(broker.url(kind), "guest", secret, vhost))


async def test_missing_queue_refuses_the_subscription(kind, connect) -> None:
    source = await connect(kind)
    with pytest.raises(SubscriptionRefused) as info:
        await source.subscribe(f"no-such-queue-{uuid.uuid4().hex}", prefetch=1)
    if kind == "tcp":  # web-STOMP closes without the ERROR frame that would say why
        assert isinstance(info.value, QueueNotFound)
    with pytest.raises(SubscriptionRefused):  # RabbitMQ closes the connection after it
        await anext(source.messages())


async def test_unreachable_broker_fails_fast(kind, broker) -> None:
    port = {"ws": RABBITMQ.web_stomp_port, "tcp": RABBITMQ.stomp_port}[kind]
    url = broker.url(kind).replace(f":{port}", ":1")
    source = open_connection(url, "guest", "guest", "/", connect_timeout=5)
    with pytest.raises(ConnectionLost):
        await source.connect()


async def test_idle_connection_is_kept_alive_by_heartbeats(kind, queue, broker, connect) -> None:
    source = await connect(kind, heartbeat=1.0)
    await source.subscribe(queue, prefetch=5)
    # Idle for several negotiated intervals: without our heartbeats RabbitMQ would
    # close the connection, without its heartbeats we would declare it dead.
    await asyncio.sleep(5)
    await broker.publish(queue, 1)
    [msg] = await broker.take(source, 1, deadline=10)
    await source.ack(msg)


async def test_silent_server_times_out(kind, queue, connect, proxy_factory) -> None:
    proxy = await proxy_factory(kind)
    proxy.freeze()  # accepts TCP, then never answers (not the WS upgrade, not CONNECT)
    with pytest.raises(TransportTimeout):
        await connect(kind, url=proxy.url(kind), connect_timeout=1)

    proxy = await proxy_factory(kind)
    source = await connect(kind, url=proxy.url(kind), receipt_timeout=1)
    proxy.freeze()
    with pytest.raises(TransportTimeout, match="RECEIPT"):
        await source.subscribe(queue, prefetch=1)

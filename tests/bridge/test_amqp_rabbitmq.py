"""The AMQP 0-9-1 source (pika on the asyncio loop) against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid

import pytest

from bridges.transports.amqp import AmqpConnection
from bridges.transports.base import AuthenticationError, ConnectionLost, QueueNotFound, TransportTimeout
from bridges.transports.registry import open_connection

pytestmark = pytest.mark.services


async def test_open_source_picks_amqp(broker) -> None:
    assert isinstance(open_connection(broker.url("amqp"), "u", "p", "/"), AmqpConnection)
    assert isinstance(open_connection("amqps://example.org", "u", "p", "/"), AmqpConnection)


async def test_consume_in_order_with_manual_acks(queue, broker, connect) -> None:
    n = 2000
    await broker.publish(queue, n)
    source = await connect("amqp")
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
    assert not any(m.redelivered for m in seen)
    first = seen[0]
    assert first.queue == queue
    # Properties under the names RabbitMQ's STOMP adapter uses: same shape either way.
    assert first.headers == {
        "x-message-id": broker.message_id(0),
        "content-type": "application/json",
        "amqp-message-id": "amqp-0",
        "persistent": "true",
    }

    await source.close()  # the Connection.Close handshake follows every ack
    assert [m async for m in source.messages()] == []
    await broker.wait_for_queue(queue, consumers=0, messages=0)


async def test_unacked_messages_are_redelivered_after_close(queue, broker, connect) -> None:
    await broker.publish(queue, 20)
    first = await connect("amqp")
    await first.subscribe(queue, prefetch=5)
    held = await broker.take(first, 5)
    assert [m.body for m in held] == [broker.body(i) for i in range(5)]
    await first.close()

    second = await connect("amqp")
    await second.subscribe(queue, prefetch=50)
    again = await broker.take(second, 20)
    assert [m.body for m in again] == [broker.body(i) for i in range(20)]
    assert [m.redelivered for m in again] == [True] * 5 + [False] * 15
    for msg in again:
        await second.ack(msg)
    await second.close()
    assert await broker.depth(queue) == 0


async def test_coalesced_acks_settle_exactly_the_acked_messages(queue, broker, connect) -> None:
    """Acks go out as one multiple ack for the acked run at the front and single acks
    behind a gap: whatever the order, only acked messages are settled."""
    await broker.publish(queue, 12)
    first = await connect("amqp")
    await first.subscribe(queue, prefetch=12)
    held = await broker.take(first, 12)
    for i in (2, 0, 1, 5, 7):  # a run at the front (0-2) and two behind the gap at 3
        await first.ack(held[i])
    await first.nack(held[6])  # settled out of order (requeued, then delivered again)
    await first.ack_many([held[9], held[8]])
    await asyncio.sleep(0)  # one loop turn: the flush ack_many scheduled goes out on its own
    await first.ack(held[3])  # closes the gap: the front run now reaches 3, 5 waits behind 4
    await first.close()

    second = await connect("amqp")
    await second.subscribe(queue, prefetch=50)
    again = await broker.take(second, 4)
    assert sorted(m.body for m in again) == sorted(broker.body(i) for i in (4, 6, 10, 11))
    await second.ack_many(again)
    await second.close()
    assert await broker.depth(queue) == 0


async def test_lost_connection_raises_promptly_and_reconnects(queue, broker, connect, proxy_factory) -> None:
    await broker.publish(queue, 10)
    proxy = await proxy_factory("amqp")
    source = await connect("amqp", url=proxy.url("amqp"))
    await source.subscribe(queue, prefetch=5)
    held = await broker.take(source, 5)

    proxy.cut()
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(10):
            await anext(source.messages())
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionLost):
        await source.ack(held[0])

    await source.connect()
    await source.subscribe(queue, prefetch=20)
    again = await broker.take(source, 10)
    assert [m.body for m in again] == [broker.body(i) for i in range(10)]
    assert [m.redelivered for m in again[:5]] == [True] * 5
    with pytest.raises(ConnectionLost, match="earlier connection"):
        await source.ack(held[0])  # a delivery tag of the dead channel
    for msg in again:
        await source.ack(msg)
    await source.close()
    assert await broker.depth(queue) == 0


async def test_dead_peer_is_detected_by_heartbeat(queue, connect, proxy_factory) -> None:
    proxy = await proxy_factory("amqp")
    source = await connect("amqp", url=proxy.url("amqp"), heartbeat=1.0)
    await source.subscribe(queue, prefetch=5)
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(30):
            await anext(source.messages())
    # pika checks every heartbeat + 5 s and fails after one silent check interval.
    assert time.monotonic() - started < 15


async def test_prefetch_bounds_unacked_messages(queue, broker, connect) -> None:
    await broker.publish(queue, 100)
    source = await connect("amqp")
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
        await source.ack(got[0])
        await broker.wait_until(lambda: len(got) == 11)
        await broker.wait_for_queue(queue, messages_unacknowledged=10, messages_ready=89)
        assert len(got) == 11
    finally:
        consumer.cancel()


async def test_nack_requeues(queue, broker, connect) -> None:
    await broker.publish(queue, 2)
    source = await connect("amqp")
    await source.subscribe(queue, prefetch=1)
    [msg] = await broker.take(source, 1)
    await source.nack(msg)
    [again] = await broker.take(source, 1)
    assert again.body == msg.body and again.redelivered
    await source.ack(again)


async def test_bad_passcode_is_an_authentication_error_without_the_passcode(broker, connect, vhost, caplog) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await connect("amqp", passcode=secret)
    exc = info.value
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)
    assert "refused" in str(exc).lower()
    assert secret not in text
    assert secret not in caplog.text
    assert secret not in repr(open_connection(broker.url("amqp"), "guest", secret, vhost))


async def test_missing_queue_is_queue_not_found_and_never_declared(broker, connect) -> None:
    source = await connect("amqp")
    name = f"no-such-queue-{uuid.uuid4().hex}"
    with pytest.raises(QueueNotFound):
        await source.subscribe(name, prefetch=1)
    with pytest.raises(QueueNotFound):
        await anext(source.messages())
    async with asyncio.timeout(5):
        await source.close()
    with pytest.raises(Exception, match="NOT_FOUND"):  # still does not exist
        await broker.depth(name)


async def test_unreachable_broker_fails_fast() -> None:
    source = open_connection("amqp://127.0.0.1:1", "guest", "guest", "/", connect_timeout=5)
    with pytest.raises(ConnectionLost):
        await source.connect()


async def test_idle_connection_is_kept_alive_by_heartbeats(queue, broker, connect) -> None:
    source = await connect("amqp", heartbeat=1.0)
    await source.subscribe(queue, prefetch=5)
    await asyncio.sleep(5)  # several heartbeat intervals with no traffic
    await broker.publish(queue, 1)
    [msg] = await broker.take(source, 1, deadline=10)
    await source.ack(msg)


async def test_silent_server_times_out(queue, connect, proxy_factory) -> None:
    proxy = await proxy_factory("amqp")
    proxy.freeze()
    with pytest.raises(TransportTimeout):
        await connect("amqp", url=proxy.url("amqp"), connect_timeout=1)

    proxy = await proxy_factory("amqp")
    source = await connect("amqp", url=proxy.url("amqp"), receipt_timeout=1)
    proxy.freeze()
    with pytest.raises(TransportTimeout):
        await source.subscribe(queue, prefetch=1)

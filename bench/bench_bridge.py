"""Bridge throughput next to a raw consume of the same broker, per transport.

For each transport: pre-fill a queue with N Waldur-shaped events, consume them raw
(our STOMP/AMQP source, ack per message, nothing else), pre-fill again and let the
bridge relay them into Kafka (acks=all, ack after the Kafka ack). Prints events/s and
the ratio bridge/raw. Needs the local brokers: `make services`.

    .local/venv/bin/python bench/bench_bridge.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import msgspec
import pika
from rich.console import Console
from rich.table import Table

from bridges.app import Bridge
from bridges.source import open_source
from streams.config import parse_config

TRANSPORTS = {"web-stomp": "ws://127.0.0.1:15674/ws", "stomp": "stomp://127.0.0.1:61613", "amqp": "amqp://127.0.0.1:5672"}
OFFERING = uuid.uuid4().hex


def fill(queue: str, count: int) -> None:
    params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for i in range(count):
            body = msgspec.json.encode({
                "action": "update", "offering_user_uuid": uuid.uuid4().hex, "user_uuid": uuid.uuid4().hex,
                "username": f"user{i}", "state": "OK", "runtime_state": "Active",
                "changed_fields": ["username"], "offering_uuid": OFFERING,
            })
            channel.basic_publish("", queue, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", headers={"x-message-id": uuid.uuid4().hex}))


def delete(queue: str) -> None:
    params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as connection:
        connection.channel().queue_delete(queue)


async def raw_consume(url: str, queue: str, count: int, prefetch: int) -> float:
    source = open_source(url, "guest", "guest", "/")
    await source.connect()
    await source.subscribe(queue, prefetch)
    started, seen = time.perf_counter(), 0
    async for message in source.messages():
        await source.ack(message)
        seen += 1
        if seen == count:
            break
    elapsed = time.perf_counter() - started
    await source.close()
    return count / elapsed


async def bridge_relay(url: str, queue: str, count: int, prefetch: int) -> float:
    suffix = uuid.uuid4().hex[:8]
    os.environ["USYNC_BENCH_TOKEN"] = "guest"
    config = parse_config(f"""
web_port = 0
[kafka]
events_topic = "bench-events-{suffix}"
dlq_topic = "bench-dlq-{suffix}"
outcomes_topic = "bench-outcomes-{suffix}"
[rabbitmq]
prefetch = {prefetch}
[sites.b]
api_url = "http://127.0.0.1:1/api/"
token_env = "USYNC_BENCH_TOKEN"
broker_url = "{url}"
[[sites.b.subscriptions]]
login = "guest"
vhost = "/"
queues = ["{queue}"]
""")
    bridge = Bridge(config, health_port=0)
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    relayed = bridge.metrics.relayed.labels("b")
    while not bridge.health.ready:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    while relayed._value.get() < count:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    bridge.stop()
    await task
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"bridge vs raw consume, {args.messages:,} messages, prefetch {args.prefetch}")
    for column in ("transport", "raw consume msg/s", "bridge → Kafka msg/s", "ratio"):
        table.add_column(column, justify="right")
    for name, url in TRANSPORTS.items():
        queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        try:
            with console.status(f"{name}: filling"):
                fill(queue, args.messages)
            with console.status(f"{name}: raw consume"):
                raw = await raw_consume(url, queue, args.messages, args.prefetch)
            with console.status(f"{name}: filling"):
                fill(queue, args.messages)
            with console.status(f"{name}: bridge"):
                relay = await bridge_relay(url, queue, args.messages, args.prefetch)
        finally:
            delete(queue)
        table.add_row(name, f"{raw:,.0f}", f"{relay:,.0f}", f"{relay / raw:.2f}")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())

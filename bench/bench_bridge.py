"""Bridge throughput next to a raw consume of the same broker, per transport.

For each transport: pre-fill a queue with N Waldur-shaped events, consume them raw
(our STOMP/AMQP source, ``ack`` per message, nothing else), pre-fill again and let the
bridge relay them into Kafka (acks=all, ack after the Kafka ack). Prints events/s and
the ratio bridge/raw. Needs the local brokers: `make services`. Both sides use the same
source code, so both get its ack coalescing: acks of one loop iteration share a write
(STOMP: one ACK frame each; AMQP: one multiple ack for an acked run).

Both sides are measured the same way: the same queue, message count and prefetch, the
clock started once the subscription is in place (for the bridge: once it reports ready)
and stopped when the last message is acked (for the bridge: relayed, i.e. confirmed by
Kafka, its ack then being sent). The Kafka topics are created, and their partitions
have leaders, before any timing: a running bridge writes to topics that exist. Raw and
bridge rounds alternate (``--rounds``, 3 by default) and the medians are compared, so a
burst of load from elsewhere on the machine does not land on one side only.

On a small machine the brokers share the cores with the consumer, so the rates say as
much about RabbitMQ and Kafka as about the bridge. Each round therefore also records the
CPU time per message of the consuming process, of RabbitMQ and of Kafka (from their
pid files under ``.local/``, when the brokers are the local ones), read at the same
instants as the clock, so connecting, starting the producer and closing are left out:
the consumer's own CPU per message is the figure the machine's other load does not bend.

    .local/venv/bin/python bench/bench_bridge.py [--messages 20000] [--rounds 3] [--transport amqp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, as a script too

import msgspec
import pika
from aiokafka.structs import TopicPartition
from rich.console import Console
from rich.table import Table

from bridges.app import Bridge
from bridges.health import Health
from bridges.outlet import KafkaOutlet
from bridges.metrics import BridgeMetrics
from bridges.transports.registry import open_connection
from streams.contract.config import Config, parse_config
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ

# The local brokers, wherever USYNC_PORT_OFFSET (or the per-port variables) put them.
TRANSPORTS = {"web-stomp": RABBITMQ.web_stomp_url, "stomp": RABBITMQ.stomp_url,
              "amqp": f"amqp://{RABBITMQ.host}:{RABBITMQ.amqp_port}"}
OFFERING = uuid.uuid4().hex
ROOT = Path(__file__).resolve().parents[1]
PID_FILES = {"rabbitmq": ROOT / ".local/rabbitmq/rabbitmq.pid", "kafka": ROOT / ".local/kafka/kafka.pid"}


def process_cpu(pid: int) -> float | None:
    """user + system CPU seconds of a process; None if it is not there to read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> dict[str, int]:
    pids = {}
    for name, path in PID_FILES.items():
        try:
            pids[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # brokers run elsewhere: their CPU is not ours to read
    return pids


@dataclass
class Round:
    rate: float  # messages per second
    cpu: dict[str, float | None]  # CPU µs per message: "self", "rabbitmq", "kafka"


def cpu_now(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds so far of this process and of each broker."""
    return {"self": time.process_time(), **{name: process_cpu(pid) for name, pid in pids.items()}}


class Window:
    """The timed part of a round: wall clock and everyone's CPU, read at its start and end
    (this process as "self", the brokers, and the processes named in ``pids``)."""

    def __init__(self, pids: dict[str, int] | None = None) -> None:
        self.pids = {**broker_pids(), **(pids or {})}
        self.started = self.ended = 0.0
        self.cpu_started: dict[str, float | None] = {}
        self.cpu_ended: dict[str, float | None] = {}

    def start(self) -> None:
        self.started, self.cpu_started = time.perf_counter(), cpu_now(self.pids)

    def end(self) -> None:
        self.ended, self.cpu_ended = time.perf_counter(), cpu_now(self.pids)

    def round(self, count: int) -> Round:
        cpu: dict[str, float | None] = {}
        for name in ("self", "rabbitmq", "kafka", *self.pids):
            b, a = self.cpu_started.get(name), self.cpu_ended.get(name)
            cpu[name] = None if a is None or b is None else (a - b) / count * 1e6
        return Round(count / (self.ended - self.started), cpu)


def amqp_params() -> pika.ConnectionParameters:
    return pika.ConnectionParameters(RABBITMQ.host, RABBITMQ.amqp_port, "/", pika.PlainCredentials("guest", "guest"))


def fill(queue: str, count: int, ids: list[str] | None = None) -> None:
    """``count`` Waldur-shaped update events on ``queue``; with ``ids``, message i carries
    ``ids[i]`` as its offering user uuid, its ``x-message-id`` header and its AMQP
    message id, so a reader of any system's records can tell which messages arrived."""
    with pika.BlockingConnection(amqp_params()) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for i in range(count):
            ident = ids[i] if ids is not None else uuid.uuid4().hex
            body = msgspec.json.encode({
                "action": "update", "offering_user_uuid": ident, "user_uuid": uuid.uuid4().hex,
                "username": f"user{i}", "state": "OK", "runtime_state": "Active",
                "changed_fields": ["username"], "offering_uuid": OFFERING,
            })
            channel.basic_publish("", queue, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=ident,
                headers={"x-message-id": ident if ids is not None else uuid.uuid4().hex}))


def delete(queue: str) -> None:
    with pika.BlockingConnection(amqp_params()) as connection:
        connection.channel().queue_delete(queue)


async def raw_consume(url: str, queue: str, count: int, prefetch: int) -> Round:
    source = open_connection(url, "guest", "guest", "/")
    await source.connect()
    await source.subscribe(queue, prefetch)
    window, seen = Window(), 0
    window.start()
    async for message in source.messages():
        await source.ack(message)
        seen += 1
        if seen == count:
            break
    window.end()
    await source.close()
    return window.round(count)


def bridge_config(url: str, queue: str, prefetch: int) -> Config:
    return parse_config(bridge_config_text(url, queue, prefetch))


def bridge_config_text(url: str, queue: str, prefetch: int, suffix: str | None = None) -> str:
    """A bridge's TOML for one queue of the local broker, with its own topics
    (``bench-events-<suffix>``...); the passcode comes from ``USYNC_BENCH_TOKEN``."""
    suffix = suffix or uuid.uuid4().hex[:8]
    os.environ["USYNC_BENCH_TOKEN"] = "guest"
    return f"""
web_port = 0
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
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
"""


async def prepare_topics(config: Config) -> None:
    """Create the bench's topics and wait until every partition has a leader."""
    outlet = KafkaOutlet(config, Health(), BridgeMetrics())
    await outlet.ready()  # creates the topics
    try:
        for topic in outlet.topics.values():
            while True:
                partitions = await outlet.producer.partitions_for(topic)
                cluster = outlet.producer.client.cluster
                leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions or ()]
                if leaders and all(leader not in (None, -1) for leader in leaders):
                    break
                await asyncio.sleep(0.1)
    finally:
        await outlet.stop()


async def bridge_relay(config: Config, count: int) -> Round:
    bridge = Bridge(config, health_port=0)
    window = Window()
    done = asyncio.get_running_loop().create_future()
    health_set, relayed = bridge.health.set, bridge.metrics.relayed.labels("b")
    relayed_inc = relayed.inc

    def on_health(name: str, state: str, detail: str = "") -> None:
        health_set(name, state, detail)
        if not window.started and bridge.health.ready:
            window.start()

    def on_relayed(amount: float = 1) -> None:
        relayed_inc(amount)
        if relayed._value.get() >= count and not done.done():
            window.end()
            done.set_result(None)

    bridge.health.set = on_health  # type: ignore[method-assign]
    relayed.inc = on_relayed  # type: ignore[method-assign]
    task = asyncio.create_task(bridge.run(install_signal_handlers=False))
    await done
    bridge.stop()
    await task
    return window.round(count)


async def measure(url: str, messages: int, prefetch: int, rounds: int) -> tuple[list[Round], list[Round]]:
    """Alternating raw and bridge rounds on one queue and one set of warm Kafka topics."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    config = bridge_config(url, queue, prefetch)
    raws: list[Round] = []
    relays: list[Round] = []
    try:
        await prepare_topics(config)
        fill(queue, 200)  # warm-up, untimed: first connections, first records on the topics
        await raw_consume(url, queue, 200, prefetch)
        fill(queue, 200)
        await bridge_relay(config, 200)
        for _ in range(rounds):
            fill(queue, messages)
            raws.append(await raw_consume(url, queue, messages, prefetch))
            fill(queue, messages)
            relays.append(await bridge_relay(config, messages))
    finally:
        delete(queue)
    return raws, relays


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/bridge rounds per transport; medians compared")
    parser.add_argument("--transport", choices=list(TRANSPORTS), action="append",
                        help="measure only this transport (repeatable); all three by default")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 132))  # the CPU table needs the room
    title = f"bridge vs raw consume, {args.messages:,} messages, prefetch {args.prefetch}, median of {args.rounds} rounds"
    table = Table(title=title)
    for column in ("transport", "raw consume msg/s", "bridge → Kafka msg/s", "ratio", "ratio per round"):
        table.add_column(column, justify="right")
    cpu_table = Table(title="CPU µs per message (median of the rounds)")
    for column in ("transport", "raw: consumer", "RabbitMQ", "Kafka", "bridge: bridge", "RabbitMQ", "Kafka",
                   "ratio by CPU", "ceiling"):
        cpu_table.add_column(column, justify="right")
    for name in args.transport or list(TRANSPORTS):
        url = TRANSPORTS[name]
        with console.status(f"{name}: {args.rounds} rounds"):
            raws, relays = await measure(url, args.messages, args.prefetch, args.rounds)
        raw, relay = statistics.median(r.rate for r in raws), statistics.median(r.rate for r in relays)
        per_round = " ".join(f"{b.rate / r.rate:.2f}" for r, b in zip(raws, relays, strict=True))
        table.add_row(name, f"{raw:,.0f}", f"{relay:,.0f}", f"{relay / raw:.2f}", per_round)
        raw_cpu, relay_cpu = median_cpu(raws), median_cpu(relays)
        cpu_table.add_row(name, *cells(raw_cpu), *cells(relay_cpu), *cpu_ratios(raw_cpu, relay_cpu))
    console.print(table)
    console.print(cpu_table)


def median_cpu(rounds: list[Round]) -> dict[str, float | None]:
    """Median CPU µs per message of the consumer, RabbitMQ and Kafka over the rounds."""
    medians: dict[str, float | None] = {}
    for name in ("self", "rabbitmq", "kafka"):
        values = [v for r in rounds if (v := r.cpu[name]) is not None]
        medians[name] = statistics.median(values) if values else None
    return medians


def cells(cpu: dict[str, float | None]) -> list[str]:
    return [f"{cpu[name]:.1f}" if cpu[name] is not None else "-" for name in ("self", "rabbitmq", "kafka")]


def cpu_ratios(raw: dict[str, float | None], relay: dict[str, float | None]) -> list[str]:
    """When every core is busy (both sides here), the rates stand as the machine's CPU per
    message: "ratio by CPU" is raw total / bridge total; "ceiling" is that ratio if the
    bridge itself cost no more than the raw consumer, i.e. what the brokers' share of
    the cores leaves attainable."""
    if None in raw.values() or None in relay.values():
        return ["-", "-"]
    raw_total = sum(raw.values())  # type: ignore[arg-type]
    relay_total = sum(relay.values())  # type: ignore[arg-type]
    free_bridge_total = relay_total - relay["self"] + raw["self"]  # type: ignore[operator]
    return [f"{raw_total / relay_total:.2f}", f"{raw_total / free_bridge_total:.2f}"]

if __name__ == "__main__":
    asyncio.run(main())

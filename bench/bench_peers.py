"""The bridge against what an operator would otherwise deploy: Kafka Connect with a RabbitMQ source.

Systems, each on the same local RabbitMQ queue and the same local Kafka, each its own process:

- ``raw``: a raw consumer of the queue (the bridge's AMQP source, ack per message, no Kafka): the floor;
- ``usync amqp`` / ``usync stomp`` / ``usync web-stomp``: ``usync bridge`` over each transport
  (no peer speaks STOMP or web-STOMP);
- ``connect jcustenborder``: Kafka Connect 3.8.1 standalone + kafka-connect-rabbitmq 0.0.2.16;
- ``connect camel``: the same runtime + camel-spring-rabbitmq-source-kafka-connector 4.18.0.

bench/peers.py installs the Connect peers under .local/connect/ on first use and says how each
one acks and how their producers are set beside the bridge's.

Throughput, per round and system: a fresh queue pre-filled with ``--messages`` events (100k),
a fresh topic (4 partitions, leaders elected), the system started; the window opens once
Kafka holds 10 % of the messages (start-up, the JVM's first compilations and the
consumer's first credit are left out for every system alike) and closes once it holds all
of them (the raw consumer times itself the same way, by messages acked). In the window:
messages/s, CPU µs per message of the system's process, of RabbitMQ and of Kafka (from
/proc), and the process's peak RSS. Systems alternate within a round; ``--rounds`` rounds.

Loss test, per system: ``--loss-messages`` ids published, the system started, ``kill -9`` once
Kafka holds about half of them, started again, run until the queue is empty and Kafka
quiet, stopped; then every record of the topic is read and its message id taken (the
bridge's ``usync.event-id`` header, jcustenborder's key, Camel's message-id header):
distinct ids against those published (lost), and records beyond one per id (duplicates).

    .local/venv/bin/python bench/bench_peers.py [--messages 100000] [--rounds 2] [--loss-messages 20000]
        [--systems raw,usync-amqp,...] [--plot docs/img/peers.png] [--json out.json]

Needs the local brokers (``make services``); the box's load moves every absolute figure:
compare the systems within one run (they alternate) and read the ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import pika  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench_bridge import TRANSPORTS, Window, amqp_params, bridge_config_text, delete, fill, raw_consume  # noqa: E402
from peers import ConnectWorker, Service, UsyncBridge, install  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ  # noqa: E402

SYSTEMS = ("raw", "usync-amqp", "usync-stomp", "usync-web-stomp", "connect-jcustenborder", "connect-camel")
AT_LEAST_ONCE = {"usync-amqp", "usync-stomp", "usync-web-stomp", "connect-jcustenborder"}
WARM = 0.10  # share of the messages before the window opens
POLL = 0.01  # seconds between two looks at the topic's end offsets
console = Console(stderr=True)


@dataclass
class Measure:
    system: str
    rate: float  # messages/s in the window
    cpu: dict[str, float | None]  # µs per message: "system", "rabbitmq", "kafka"
    rss_mib: float | None  # the process's peak RSS


@dataclass
class Loss:
    system: str
    published: int
    records: int  # in Kafka, duplicates included
    distinct: int  # of the published ids
    duplicates: int
    left: int  # still in the queue after the final stop
    killed_at: int  # records in Kafka when the process was killed
    note: str = ""

    @property
    def lost(self) -> int:
        return self.published - self.distinct - self.left


@dataclass
class Report:
    messages: int
    rounds: list[list[Measure]] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    load: list[str] = field(default_factory=list)


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def uptime() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the systems ---------------------------------------------------------------------------


def make_service(system: str, queue: str, suffix: str, workdir: Path, prefetch: int) -> Service:
    """``system`` reading ``queue`` into the topic ``events_topic(suffix)``."""
    if system.startswith("usync-"):
        text = bridge_config_text(TRANSPORTS[system.removeprefix("usync-")], queue, prefetch, suffix=suffix)
        service: Service = UsyncBridge(workdir, text)
    else:
        service = ConnectWorker(workdir, system.removeprefix("connect-"), queue, events_topic(suffix), prefetch)
    service.name = system
    return service


def events_topic(topic: str) -> str:
    """The topic a system writes to: bridge_config_text names it ``bench-events-<suffix>``."""
    return f"bench-events-{topic}"


async def create_topic(topic: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
                if len(offsets) == partitions:
                    return
            except Exception:  # noqa: BLE001 - leaders not elected yet
                pass
            await asyncio.sleep(0.2)  # no push signal for "partition has a leader"
        raise RuntimeError(f"topic {topic} has no leaders after 30 s")
    finally:
        await consumer.stop()


async def delete_topic(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    try:
        await admin.start()
        await admin.delete_topics([topic])
    except Exception:  # noqa: BLE001 - best effort: the bench's topics are named for it
        pass
    finally:
        await admin.close()


class TopicCount:
    """Records in a topic so far (the sum of its partitions' end offsets)."""

    def __init__(self, topic: str, partitions: int = 4) -> None:
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP)

    async def __aenter__(self) -> "TopicCount":
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def count(self) -> int:
        return sum((await self.consumer.end_offsets(self.partitions)).values())

    async def until(self, target: int, service: Service, deadline: float) -> int:
        while True:
            n = await self.count()
            if n >= target:
                return n
            if not service.alive():
                raise RuntimeError(f"{service.name or 'the system'} exited; its log ends:\n{service.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n:,} of {target:,} records after the deadline; the log ends:\n{service.tail()}")
            await asyncio.sleep(POLL)  # end offsets are pulled: Kafka has no push for them


# -- throughput ----------------------------------------------------------------------------


async def throughput(system: str, messages: int, prefetch: int, tmp: Path, timeout: float) -> Measure:
    queue, suffix = f"peers-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    try:
        if system == "raw":
            fill(queue, messages)
            return await raw_child(queue, messages, prefetch)
        topic = events_topic(suffix)
        await create_topic(topic)
        fill(queue, messages)
        service = make_service(system, queue, suffix, tmp / f"{system}-{suffix}", prefetch)
        pid = service.start()
        try:
            async with TopicCount(topic) as topic_count:
                deadline = time.monotonic() + timeout
                window = Window({"system": pid})
                await topic_count.until(int(messages * WARM), service, deadline)
                window.start()
                await topic_count.until(messages, service, deadline)
                window.end()
                rss = peak_rss_mib(pid)
        finally:
            service.stop()
        measured = window.round(messages - int(messages * WARM))
        return Measure(system, measured.rate, {k: measured.cpu.get(k) for k in ("system", "rabbitmq", "kafka")}, rss)
    finally:
        delete(queue)
        if system != "raw":
            await delete_topic(events_topic(suffix))


async def raw_child(queue: str, messages: int, prefetch: int) -> Measure:
    """The raw consumer in its own process (so its CPU and RSS are its own), timed as the others."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--raw-child", queue, str(messages), str(prefetch),
        stdout=asyncio.subprocess.PIPE, env=os.environ.copy())
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the raw consumer exited with {proc.returncode}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    return Measure("raw", data["rate"], data["cpu"], data["rss_mib"])


async def raw_main(queue: str, messages: int, prefetch: int) -> None:
    warm = int(messages * WARM)
    await raw_consume(TRANSPORTS["amqp"], queue, warm, prefetch)  # the window opens after the first 10 %
    measured = await raw_consume(TRANSPORTS["amqp"], queue, messages - warm, prefetch)
    cpu = {"system": measured.cpu["self"], "rabbitmq": measured.cpu["rabbitmq"], "kafka": measured.cpu["kafka"]}
    print(json.dumps({"rate": measured.rate, "cpu": cpu, "rss_mib": peak_rss_mib(os.getpid())}))


# -- loss ----------------------------------------------------------------------------------


def extract_id(system: str, key: bytes | None, headers: list[tuple[str, bytes]]) -> str | None:
    """The message id a system's record carries (see the module docstring)."""
    wanted = {"connect-camel": "CamelHeader.CamelSpringRabbitmqMessageId"}.get(system, "usync.event-id")
    if system == "connect-jcustenborder":
        return json.loads(key)["messageId"] if key else None
    for name, value in headers:
        if name == wanted:
            return value.decode()
    return None


async def read_ids(system: str, topic: str) -> list[str | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        ids: list[str | None] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                ids.extend(extract_id(system, r.key, list(r.headers)) for r in records)
        return ids
    finally:
        await consumer.stop()


def queue_depth(queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted until their consumer is gone)."""
    with pika.BlockingConnection(amqp_params()) as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


async def loss(system: str, messages: int, prefetch: int, tmp: Path, timeout: float, quiet: float = 5.0) -> Loss:
    queue, suffix = f"loss-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    topic = events_topic(suffix)
    ids = [uuid.uuid4().hex for _ in range(messages)]
    await create_topic(topic)
    fill(queue, messages, ids)
    service = make_service(system, queue, suffix, tmp / f"loss-{system}-{suffix}", prefetch)
    try:
        async with TopicCount(topic) as topic_count:
            service.start()
            killed_at = await topic_count.until(messages // 2, service, time.monotonic() + timeout)
            service.kill()
            service.start()
            await _quiet(topic_count, queue, service, quiet, time.monotonic() + timeout)
        service.stop()
        left = queue_depth(queue)
        found = await read_ids(system, topic)
        published = set(ids)
        distinct = len(published.intersection(found))
        return Loss(system, messages, len(found), distinct, len(found) - len(set(found)), left, killed_at)
    finally:
        service.stop()
        delete(queue)
        await delete_topic(topic)


async def _quiet(topic_count: TopicCount, queue: str, service: Service, quiet: float, deadline: float) -> None:
    """Until the queue holds nothing, ready or unacked (RabbitMQ's management API; its
    figures lag by up to 5 s, so a zero is also old news), and the topic grew by nothing
    for ``quiet`` s. Unacked counts too: a restarted peer with no prefetch limit holds the
    whole queue unacked while its JVM starts."""
    last, since = -1, time.monotonic()
    async with httpx.AsyncClient(base_url=RABBITMQ.management_url, auth=("guest", "guest"), timeout=10) as client:
        while time.monotonic() < deadline:
            n = await topic_count.count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                r = await client.get(f"/api/queues/%2F/{queue}")
                if r.status_code == 200 and r.json().get("messages", 1) == 0:
                    return
            if not service.alive():
                raise RuntimeError(f"{service.name} exited after its restart; its log ends:\n{service.tail()}")
            await asyncio.sleep(0.2)  # sampling period of the quiescence check
    console.print(f"[yellow]{service.name}: not quiet by the deadline[/yellow]")


# -- report --------------------------------------------------------------------------------


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)
    return fmt.format(mid) if len(values) == 1 else f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def by_system(report: Report) -> dict[str, list[Measure]]:
    out: dict[str, list[Measure]] = {}
    for measures in report.rounds:
        for m in measures:
            out.setdefault(m.system, []).append(m)
    return out


def cpu_values(measures: list[Measure], name: str) -> list[float]:
    return [v for m in measures if (v := m.cpu.get(name)) is not None]


def throughput_table(report: Report) -> Table:
    table = Table(title=f"{report.messages:,} messages per system and round, window 10–100 %: "
                        f"median (range) over {len(report.rounds)} rounds")
    for column in ("system", "msgs/s", "CPU µs/msg: system", "RabbitMQ", "Kafka", "total", "peak RSS MiB", "acks"):
        table.add_column(column, justify="left" if column in ("system", "acks") else "right")
    for system, measures in by_system(report).items():
        totals = [sum(v for v in m.cpu.values() if v is not None) for m in measures]
        acks = ("after the Kafka ack" if system in AT_LEAST_ONCE else
                "on entering memory" if system == "connect-camel" else "(no Kafka)")
        table.add_row(system, _span([m.rate for m in measures], "{:,.0f}"),
                      _span(cpu_values(measures, "system"), "{:.1f}"), _span(cpu_values(measures, "rabbitmq"), "{:.1f}"),
                      _span(cpu_values(measures, "kafka"), "{:.1f}"), _span(totals, "{:.1f}"),
                      _span([m.rss_mib for m in measures if m.rss_mib is not None], "{:.0f}"), acks)
    return table


def loss_table(losses: list[Loss]) -> Table:
    table = Table(title="kill -9 at about half way, then restarted: what reached Kafka")
    for column in ("system", "published", "records in Kafka", "killed at", "distinct ids", "lost", "duplicates",
                   "left in queue", "note"):
        table.add_column(column, justify="left" if column in ("system", "note") else "right")
    for r in losses:
        table.add_row(r.system, f"{r.published:,}", f"{r.records:,}", f"{r.killed_at:,}", f"{r.distinct:,}",
                      f"{r.lost:,}", f"{r.duplicates:,}", f"{r.left:,}", r.note)
    return table


def goals(report: Report) -> list[str]:
    systems = by_system(report)
    lines = []
    peer = systems.get("connect-jcustenborder")
    for name in ("usync-amqp", "usync-stomp", "usync-web-stomp"):
        ours = systems.get(name)
        if not (ours and peer):
            continue
        rate = statistics.median(m.rate for m in ours) / statistics.median(m.rate for m in peer)
        cpu = statistics.median(cpu_values(ours, "system")) / statistics.median(cpu_values(peer, "system"))
        lines.append(f"{name}: {rate:.2f}x the at-least-once peer's rate (goal >= 1.0: {'met' if rate >= 1 else 'NOT met'}), "
                     f"{cpu:.2f}x its CPU per message (goal <= 1.0: {'met' if cpu <= 1 else 'NOT met'})")
    for r in report.losses:
        if r.system.startswith("usync-"):
            lines.append(f"{r.system}: lost {r.lost} (goal 0: {'met' if r.lost == 0 else 'NOT met'})")
    return lines


def plot(report: Report, path: Path) -> None:
    from plots import bars

    systems = by_system(report)
    names = list(systems)
    rates = [statistics.median(m.rate for m in systems[n]) for n in names]
    cpu = {part: [statistics.median(cpu_values(systems[n], part) or [0.0]) for n in names]
           for part in ("system", "rabbitmq", "kafka")}
    bars(path, names, rates, cpu, title=f"RabbitMQ → Kafka, {report.messages:,} messages ({time.strftime('%Y-%m-%d')})",
         rate_label="messages/s (median)", cpu_label="CPU µs per message")


# -- main ----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if any(s.startswith("connect-") for s in systems):
        install(log=console.print)
    report = Report(args.messages)
    with tempfile.TemporaryDirectory(prefix="usync-peers-") as tmp:
        for n in range(args.rounds):
            report.load.append(uptime())
            measures = []
            for system in systems:
                with console.status(f"round {n + 1}/{args.rounds}: {system}, {args.messages:,} messages"):
                    m = await throughput(system, args.messages, args.prefetch, Path(tmp), args.timeout)
                console.print(f"round {n + 1} {system}: {m.rate:,.0f} msgs/s, CPU µs/msg {m.cpu}, RSS {m.rss_mib} MiB")
                measures.append(m)
            report.rounds.append(measures)
        for system in systems if args.loss_messages else ():
            if system == "raw":
                continue
            with console.status(f"loss test: {system}, {args.loss_messages:,} messages, kill -9 at half"):
                r = await loss(system, args.loss_messages, args.prefetch, Path(tmp), args.timeout)
            console.print(f"loss {system}: {r}")
            report.losses.append(r)
        report.load.append(uptime())
    out = Console(width=max(Console().width, 140))
    out.print(throughput_table(report))
    if report.losses:
        out.print(loss_table(report.losses))
    for line in goals(report):
        out.print(line)
    out.print(f"load average (1, 5, 15 min) at each round's start and at the end: {'; '.join(report.load)}")
    if args.plot:
        plot(report, Path(args.plot))
        out.print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loss-messages", type=int, default=20_000, help="0: no loss test")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one system may take for its messages")
    parser.add_argument("--plot", default=None, help="write a PNG of rates and CPU per message (needs the bench extra)")
    parser.add_argument("--json", default=None, help="write the figures as JSON")
    parser.add_argument("--raw-child", nargs=3, metavar=("QUEUE", "COUNT", "PREFETCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_child:
        queue, count, prefetch = args.raw_child
        asyncio.run(raw_main(queue, int(count), int(prefetch)))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

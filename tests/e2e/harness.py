"""The whole pipeline under faults: two simulated sites, the bridge and two workers as
subprocesses, a paced stream of username changes on B, and the checks every fault
scenario ends with (A equals B, nothing lost, every correction answered, nobody died).

Conditions are awaited with deadlines (``until``); the only sleeps are the pacing of the
changes and the length of an outage, which are the scenario, not synchronisation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.contract.config import Config, load_config
from streams.contract.schema import Outcome, Origin, envelope_decoder, outcome_decoder
from streams.contract.schema import request_decoder
from tests.app.harness import USYNC, WorkerProcess, free_port, until, usernames
from tests.support.processes import terminate
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ

log = logging.getLogger("tests.e2e")
ROOT = Path(__file__).resolve().parents[2]

OFFERINGS = 4  # links; one B queue each, so a 60 s stall queues < 10,000 (Waldur's x-max-length) per queue
USERS = 25  # per offering: 100 (link, user) rows
CHANGES = 10_000
PUBLISH_SECONDS = 40.0  # 250 changes/s = 500 B events/s
RATES = "requests_per_second = 400.0\nburst = 100\nconcurrency = 16\ntimeout = 5.0"


class Process:
    """A usync subprocess with its log in a file; ``killed`` says we ended it ourselves."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, health: str) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.health = health
        self.killed = False
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    async def ready(self, timeout: float = 90) -> None:
        async def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    return (await client.get(self.health)).status_code == 200
            except httpx.HTTPError:
                return False
        await until(up, timeout, f"{self.name} to be ready", interval=0.25)

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def kill9(self) -> None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, 20)
        self._log.close()


@dataclass
class Pipeline:
    """Sites a (target) and b (source), ``OFFERINGS`` links, the processes, the changes made."""

    federation: Any
    tmp: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    links: list[tuple[Any, Any]] = field(default_factory=list)  # (offering A, offering B)
    b_users: list[Any] = field(default_factory=list)  # B's offering users, all links
    processes: list[Process] = field(default_factory=list)
    config_path: Path | None = None
    changes_made: int = 0
    bootstrap: str = KAFKA_BOOTSTRAP  # the cluster's list for the cluster tests

    @property
    def a(self) -> Any:
        return self.federation.sites["a"]

    @property
    def b(self) -> Any:
        return self.federation.sites["b"]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "USYNC_TOKEN_A": self.a.staff_token, "USYNC_TOKEN_B": self.b.staff_token}

    @property
    def config(self) -> Config:
        assert self.config_path is not None
        return load_config(self.config_path, self.env)

    # -- world -------------------------------------------------------------------------

    def populate(self) -> None:
        per_site: dict[str, list[Any]] = {}
        for site in (self.a, self.b):
            sp = site.create_customer("sp")
            customer = site.create_customer("c", owners=[])
            project = site.create_project(customer, "p")
            offerings = []
            for i in range(OFFERINGS):
                offering = site.create_offering(sp, f"hpc{i}")
                site.create_resource(offering, project, f"alloc{i}", backend_id=f"acc{i}")
                offerings.append(offering)
            for j in range(USERS):
                user = site.create_user(f"user{j:03d}")
                ous = site.add_project_member(user, project)
                if site is self.b:
                    self.b_users.extend(ous)
            per_site[site.name] = offerings
        self.links = list(zip(per_site["a"], per_site["b"]))

    def write_config(self) -> Path:
        def site(s: Any, env: str) -> str:
            return (f'[sites.{s.name}]\napi_url = "{s.url}"\ntoken_env = "{env}"\n'
                    f'broker_url = "{RABBITMQ.web_stomp_url}"\nregister = true\n'
                    f"[sites.{s.name}.rates]\n{RATES}\n")

        text = (
            f'app_id = "usync-e2e-{self.suffix}"\nreconcile_interval = 3600\n'
            f'data_dir = "{self.tmp / "data"}"\n'
            f'[kafka]\nbootstrap_servers = "{self.bootstrap}"\n'
            f'events_topic = "e2e-{self.suffix}.events"\ndlq_topic = "e2e-{self.suffix}.dlq"\n'
            f'outcomes_topic = "e2e-{self.suffix}.outcomes"\npartitions = 4\n'
            + site(self.a, "USYNC_TOKEN_A") + site(self.b, "USYNC_TOKEN_B")
        )
        for i, (off_a, off_b) in enumerate(self.links):
            text += (f'[[links]]\nname = "hpc{i}"\n'
                     f'target = {{ site = "a", offering = "{off_a.uuid}" }}\n'
                     f'source = {{ site = "b", offering = "{off_b.uuid}" }}\n')
        self.config_path = self.tmp / "usync.toml"
        self.config_path.write_text(text)
        return self.config_path

    # -- processes ---------------------------------------------------------------------

    def start_bridge(self, slot: int = 0) -> Process:
        """Bridge ``slot``: 0 is the pipeline's bridge (``bridge-N``, bridge.log); a second
        bridge on the same configuration (the pair test) is slot 1 (``bridge1-N``, bridge1.log)."""
        port = free_port()
        prefix = "bridge-" if slot == 0 else f"bridge{slot}-"
        n = sum(p.name.startswith(prefix) for p in self.processes)
        process = Process(f"{prefix}{n}", [USYNC, "bridge", "--config", str(self.config_path), "--health-port", str(port)],
                          self.env, self.tmp / ("bridge.log" if slot == 0 else f"bridge{slot}.log"),
                          f"http://127.0.0.1:{port}/health/ready")
        self.processes.append(process)
        return process

    def start_worker(self, slot: int) -> Process:
        """Worker ``slot`` (0 or 1); a restarted worker keeps its slot's data dir."""
        port = free_port()
        n = sum(p.name.startswith(f"worker{slot}") for p in self.processes)
        args = [USYNC, "worker", "--config", str(self.config_path), "--store", "memory", "--web-port", str(port),
                "--data-dir", str(self.tmp / f"data-{slot}")]
        process = Process(f"worker{slot}-{n}", args, self.env, self.tmp / f"worker{slot}.log",
                          f"http://127.0.0.1:{port}/health")
        self.processes.append(process)
        return process

    def running(self, prefix: str) -> list[Process]:
        return [p for p in self.processes if p.name.startswith(prefix) and not p.killed]

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    async def start(self, *, precreate_corrections: bool = True, settle: bool = True) -> None:
        """Bridge and two workers up; the bridge subscribed on both sites.

        ``precreate_corrections``: create ``<app_id>-corrections`` before the workers start.
        Works around a startup race (test_worker_startup.py): a fresh worker that creates
        that topic itself can lead the group's assignment before its metadata knows the
        topic, and then no worker ever consumes the corrections."""
        self.populate()
        self.write_config()
        if precreate_corrections:
            kafka = self.config.kafka
            await create_topic(f"{self.config.app_id}-corrections", 4, self.bootstrap, kafka.replication_factor,
                               kafka.replica_configs)
        bridge = self.start_bridge()
        workers = [self.start_worker(0), self.start_worker(1)]
        for process in (bridge, *workers):
            await process.ready()
        if settle:
            await until(self.fold_group_settled, 90, "the workers' faust group to settle", interval=0.25)

    def fold_group_settled(self) -> bool:
        """Every worker restored its tables for the same, newest faust generation. A worker
        answers /health before that. The fault scenarios hit a steady pipeline, so they
        start from a settled group; an outage during the restore has its own test
        (tests/app/test_recovery_outage.py)."""
        generations = set()
        for process in self.running("worker"):
            text = process.tail(10**7)
            assigned = text.rfind("Executing _on_partitions_assigned")
            if assigned < 0 or text.find("Recovery complete", assigned) < 0:
                return False
            generations.add(re.findall(r"generation id (\d+)", text)[-1])
        return len(generations) == 1

    # -- the changes ---------------------------------------------------------------------

    async def make_changes(self, count: int = CHANGES, seconds: float = PUBLISH_SECONDS, chunk: int = 25) -> None:
        """``count`` username changes on B, round robin over its offering users, paced evenly."""
        start = time.monotonic()
        for i in range(count):
            ou = self.b_users[i % len(self.b_users)]
            self.b.set_username(ou, f"{self.b.store.users[ou.user].username}-{i}")
            self.changes_made += 1
            if (i + 1) % chunk == 0:
                # pacing (the scenario's load shape), not synchronisation
                await asyncio.sleep(max(0.0, start + seconds * (i + 1) / count - time.monotonic()))

    # -- checks ----------------------------------------------------------------------------

    def a_equals_b(self) -> bool:
        return all(usernames(self.a, off_a) == usernames(self.b, off_b) for off_a, off_b in self.links)

    def a_b_difference(self) -> dict[str, Any]:
        diff = {}
        for off_a, off_b in self.links:
            a, b = usernames(self.a, off_a), usernames(self.b, off_b)
            diff.update({f"{off_a.name}:{u}": (a.get(u), b.get(u)) for u in set(a) | set(b) if a.get(u) != b.get(u)})
        return dict(list(diff.items())[:10]) | {"count": len(diff)}

    def published_ids(self) -> tuple[set[str], Counter]:
        """Ids of every message the sites' publishers had confirmed by the broker, and all outcomes."""
        ids: set[str] = set()
        outcomes: Counter = Counter()
        for site in (self.a, self.b):
            for _time, _vhost, _queue, message_id, outcome in list(site.publisher.sent):
                outcomes[outcome] += 1
                if outcome == "confirmed":
                    ids.add(message_id)
        return ids, outcomes

    def processes_alive(self) -> list[str]:
        """Names of the processes that exited although we did not kill them (should be none)."""
        return [f"{p.name} (exit {p.proc.returncode}):\n{p.tail(1500)}" for p in self.processes
                if not p.killed and p.proc.poll() is not None]


# The state each component reports on /health/ready when it is not waiting for anything.
READY_STATES = {"connected", "joined", "ready", "started"}


class HealthWatch:
    """Polls every running process's /health/ready during a fault and keeps what each said
    it waited for (``component: state detail``). A 503 that names no waiting component is
    a health endpoint that does not explain itself: kept in ``unexplained``."""

    def __init__(self, p: Pipeline, interval: float = 0.5) -> None:
        self.p = p
        self.interval = interval
        self.waits: dict[str, set[str]] = defaultdict(set)
        self.unexplained: list[str] = []
        self._task: asyncio.Task | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                for process in list(self.p.processes):
                    if process.killed or process.proc.poll() is not None:
                        continue
                    url = process.health.rsplit("/health", 1)[0] + "/health/ready"
                    try:
                        response = await client.get(url)
                    except httpx.HTTPError as exc:  # a busy process may miss a poll; say so
                        self.waits[process.name].add(f"no answer: {type(exc).__name__}")
                        continue
                    if response.status_code == 200:
                        continue
                    components = response.json().get("components", {})
                    waiting = [f"{name}: {c.get('state')} {str(c.get('detail') or '')[:60]}".strip()
                               for name, c in components.items() if c.get("state") not in READY_STATES]
                    self.waits[process.name].update(waiting)
                    if not waiting:
                        self.unexplained.append(f"{process.name}: {response.text[:300]}")
                await asyncio.sleep(self.interval)  # the polling period, not synchronisation

    def __enter__(self) -> HealthWatch:
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self

    def __exit__(self, *_exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()

    def figures(self) -> dict[str, list[str]]:
        return {name: sorted(states) for name, states in self.waits.items()}


async def relay_figures(p: Pipeline) -> dict[str, int]:
    """Events the sites' publishers had confirmed, those in the events topic (distinct ids),
    lost ones, and duplicates: topic copies of an id beyond the times it was published
    (the simulator's ids are content hashes, so equal content repeats an id)."""
    published: Counter = Counter()
    for site in (p.a, p.b):
        for _time, _vhost, _queue, message_id, outcome in list(site.publisher.sent):
            if outcome == "confirmed":
                published[message_id] += 1
    in_topic: Counter = Counter()
    for value in await read_topic(p.config.kafka.events_topic, bootstrap=p.bootstrap):
        envelope = envelope_decoder.decode(value)
        if envelope.origin in (Origin.STOMP, Origin.AMQP):
            in_topic[envelope.event_id] += 1
    return {"published": sum(published.values()), "published_ids": len(published), "in_topic_distinct": len(in_topic),
            "lost": len(set(published) - set(in_topic)),
            "duplicates": sum(max(0, n - published[i]) for i, n in in_topic.items())}


async def rabbitmq_backlog(p: Pipeline) -> int:
    """Messages waiting (ready or unacked) in the sites' RabbitMQ queues, from the management API."""
    vhosts = p.a.provisioned_vhosts | p.b.provisioned_vhosts
    async with httpx.AsyncClient(timeout=10, auth=(RABBITMQ.admin_user, RABBITMQ.admin_password)) as client:
        response = await client.get(f"{RABBITMQ.management_url}/api/queues", params={"columns": "vhost,messages"})
    response.raise_for_status()
    return sum(q.get("messages") or 0 for q in response.json() if q["vhost"] in vhosts)


class TopicReader:
    """Reads every partition of a topic from the start, keeping all values; ``catch_up`` reads to the end."""

    def __init__(self, topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.values: list[bytes] = []
        self.consumer: AIOKafkaConsumer | None = None

    async def open(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                         auto_offset_reset="earliest", metadata_max_age_ms=1000,
                                         max_partition_fetch_bytes=4 * 1024 * 1024)
        await self.consumer.start()
        partitions = await until(lambda: self.consumer.partitions_for_topic(self.topic), 30, f"topic {self.topic}")
        self.tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)

    async def catch_up(self, timeout: float = 60) -> list[bytes]:
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(self.tps)
        deadline = time.monotonic() + timeout
        while any([await self.consumer.position(tp) < ends[tp] for tp in self.tps]):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {self.topic} to its end in {timeout} s")
            for records in (await self.consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                self.values.extend(r.value for r in records)
        return self.values

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def read_topic(topic: str, timeout: float = 60, bootstrap: str = KAFKA_BOOTSTRAP) -> list[bytes]:
    reader = TopicReader(topic, bootstrap)
    await reader.open()
    try:
        return await reader.catch_up(timeout)
    finally:
        await reader.close()


class EventIds:
    """The broker event ids that reached the events topic (read incrementally)."""

    def __init__(self, topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> None:
        self.reader = TopicReader(topic, bootstrap)
        self.ids: set[str] = set()
        self._seen = 0

    async def refresh(self) -> set[str]:
        if self.reader.consumer is None:
            await self.reader.open()
        values = await self.reader.catch_up()
        for value in values[self._seen:]:
            envelope = envelope_decoder.decode(value)
            if envelope.origin in (Origin.STOMP, Origin.AMQP):
                self.ids.add(envelope.event_id)
        self._seen = len(values)
        return self.ids


async def create_topic(name: str, partitions: int, bootstrap: str = KAFKA_BOOTSTRAP, replicas: int = 1,
                       configs: dict[str, str] | None = None) -> None:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replicas, topic_configs=configs or {})])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def group_lag(group: str, topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> int:
    """Records of ``topic`` that consumer group ``group`` has not committed yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        # (a consumer without a subscription knows no topic's partitions: ask the admin)
        [described] = await admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert tps, f"topic {topic} has no partitions"
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            lag += ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def unanswered_corrections(requests: list[bytes], outcomes: list[Outcome]) -> list[str]:
    """Correction requests without an outcome. The sink coalesces a batch to the latest request
    per (link, user), so an earlier request is answered by a later one's outcome; the latest
    request of each key must have an outcome naming its cause."""
    last: dict[str, Any] = {}
    for value in requests:
        request = request_decoder.decode(value)
        last[request.key] = request
    answered: dict[str, set[str]] = defaultdict(set)
    for outcome in outcomes:
        answered[f"{outcome.link}:{outcome.user_username}"].add(outcome.cause_event_id)
    return [f"{key} (cause {r.cause_event_id})" for key, r in last.items() if r.cause_event_id not in answered[key]]


async def final_checks(p: Pipeline, converge_timeout: float = 240) -> dict[str, Any]:
    """A equals B, every published event in the events topic, every correction answered,
    no process exited on its own. Returns figures for the report."""
    config = p.config
    figures: dict[str, Any] = {"changes": p.changes_made}
    await asyncio.gather(p.a.publisher.drain(120), p.b.publisher.drain(120))
    try:
        await until(p.a_equals_b, converge_timeout, "A to equal B for every user", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnose(p)}") from None

    published, outcomes_seen = p.published_ids()
    figures["publisher"] = dict(outcomes_seen)
    assert outcomes_seen.get("nacked", 0) == 0 and outcomes_seen.get("unroutable", 0) == 0, \
        f"the broker refused messages (queue overflow or gone), the scenario is mis-sized: {outcomes_seen}"
    assert len(published) > 2 * p.changes_made * 0.5  # the changes were really published (ids repeat only for equal content)
    ids = EventIds(config.kafka.events_topic, p.bootstrap)
    try:
        async def all_relayed() -> bool:
            return not (published - await ids.refresh())
        try:
            await until(all_relayed, 120, "every published event in the events topic", interval=1.0)
        except AssertionError:
            missing = published - ids.ids
            raise AssertionError(f"{len(missing)} of {len(published)} published events missing from the topic, "
                                 f"e.g. {sorted(missing)[:5]}") from None
        figures["event_ids_in_topic"] = len(ids.ids)
    finally:
        await ids.reader.close()

    # Every correction request was consumed (and so answered first: docs/invariants.md, 1) ...
    corrections_topic = f"{config.app_id}-corrections"
    await until(lambda: _no_lag(f"{config.app_id}-sink", corrections_topic, p.bootstrap), 120, "every correction request to be committed",
                interval=1.0)
    # ... and has an outcome.
    requests = await read_topic(corrections_topic, bootstrap=p.bootstrap)
    outcomes = [outcome_decoder.decode(v) for v in await read_topic(config.kafka.outcomes_topic, bootstrap=p.bootstrap)]
    missing = unanswered_corrections(requests, outcomes)
    assert not missing, f"{len(missing)} correction requests without an outcome: {missing[:5]}"
    figures["corrections"] = len(requests)
    figures["outcomes"] = dict(Counter(o.action.value for o in outcomes))
    figures["patches"] = sum(1 for c in p.a.calls.log if c.method == "PATCH")

    dead = p.processes_alive()
    assert not dead, "processes exited on their own:\n" + "\n".join(dead)
    return figures


async def _no_lag(group: str, topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> bool:
    return await group_lag(group, topic, bootstrap) == 0


async def diagnose(p: Pipeline) -> str:
    """Where the pipeline stands: A vs B, each stage's consumer lag, each worker's counters."""
    config = p.config
    app = config.app_id
    lines = [f"A differs from B: {p.a_b_difference()}"]
    published, outcomes = p.published_ids()
    ids = EventIds(config.kafka.events_topic, p.bootstrap)
    try:
        missing = published - await ids.refresh()
        lines.append(f"publisher outcomes {dict(outcomes)}; {len(missing)} of {len(published)} confirmed "
                     f"events missing from the events topic")
    except Exception as exc:
        lines.append(f"events topic: {exc!r}")
    finally:
        await ids.reader.close()
    for group, topic in ((f"{app}-route", config.kafka.events_topic), (app, f"{app}-by-link"),
                         (f"{app}-sink", f"{app}-corrections")):
        try:
            lines.append(f"lag of {group} on {topic}: {await group_lag(group, topic, p.bootstrap)}")
        except Exception as exc:  # a diagnosis must not hide the failure
            lines.append(f"lag of {group} on {topic}: {exc!r}")
    wanted = ("usync_events_folded_total", "usync_corrections_requested_total", "usync_outcomes_total",
              "usync_lookups_total", "usync_drift", "usync_events_routed_total", "usync_http_calls_total", "usync_site_paused")
    for process in p.processes:
        if process.killed or not process.name.startswith("worker"):
            continue
        base = process.health.rsplit("/", 1)[0]
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                text = (await client.get(base + "/metrics")).text
            metrics = [line for line in text.splitlines() if line.startswith(wanted)]
        except httpx.HTTPError as exc:
            metrics = [repr(exc)]
        lines.append(f"{process.name}: " + "; ".join(metrics))
    return "\n".join(lines)


def dump_logs(p: Pipeline) -> None:
    for process in p.processes:
        log.warning("---- %s (exit %s) ----\n%s", process.name, process.proc.poll(), process.tail(3000))


def describe(figures: dict[str, Any]) -> str:
    return msgspec.json.encode(figures).decode()

"""What the app's acceptance tests share: two simulated sites, a config, worker subprocesses,
the bridge in-process, and polling with deadlines (never sleeps as synchronisation)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka.partitioner import murmur2

from streams.contract.config import Config, load_config
from tests.support.processes import terminate
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ

ROOT = Path(__file__).resolve().parents[2]
USYNC = str(ROOT / ".local/venv/bin/usync")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class LinkSpec:
    name: str
    a_offering: Any
    b_offering: Any
    reconcile: bool = True


@dataclass
class Setup:
    """Sites a (target) and b (source) with one offering, project and resource each."""

    a: Any
    b: Any
    offering_a: Any
    offering_b: Any
    project_a: Any
    project_b: Any
    tmp: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: list["WorkerProcess"] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "USYNC_TOKEN_A": self.a.staff_token, "USYNC_TOKEN_B": self.b.staff_token}

    def write_config(self, links: list[LinkSpec], *, broker: bool = True, rates: str = "", partitions: int = 4,
                     reconcile_interval: float = 3600.0, kafka_extra: str = "", top: str = "", site_extra: str = "",
                     bootstrap: str = KAFKA_BOOTSTRAP) -> Path:
        """``site_extra``: TOML lines added to every site (e.g. ``ca_file = "..."``); ``top``: top-level lines."""
        def site(s: Any, env: str) -> str:
            text = f'[sites.{s.name}]\napi_url = "{s.url}"\ntoken_env = "{env}"\n{site_extra}'
            if broker:
                text += f'broker_url = "{RABBITMQ.web_stomp_url}"\nregister = true\n'
            if rates:
                text += f"[sites.{s.name}.rates]\n{rates}\n"
            return text

        text = (
            f'app_id = "usync-test-{self.suffix}"\nreconcile_interval = {reconcile_interval}\n{top}'
            f'data_dir = "{self.tmp / "data"}"\n'
            f'[kafka]\nbootstrap_servers = "{bootstrap}"\nevents_topic = "t-{self.suffix}.events"\ndlq_topic = "t-{self.suffix}.dlq"\n'
            f'outcomes_topic = "t-{self.suffix}.outcomes"\npartitions = {partitions}\n{kafka_extra}'
            + site(self.a, "USYNC_TOKEN_A") + site(self.b, "USYNC_TOKEN_B")
        )
        for link in links:
            text += (
                f'[[links]]\nname = "{link.name}"\nreconcile = {str(link.reconcile).lower()}\n'
                f'target = {{ site = "{self.a.name}", offering = "{uuid_of(link.a_offering)}" }}\n'
                f'source = {{ site = "{self.b.name}", offering = "{uuid_of(link.b_offering)}" }}\n'
            )
        path = self.tmp / "usync.toml"
        path.write_text(text)
        return path

    def config(self, path: Path) -> Config:
        return load_config(path, self.env)

    def add_user(self, name: str) -> tuple[Any, Any]:
        """A user on both sites (same username), member of both projects: (a_ou, b_ou), Requested and empty."""
        ua, ub = self.a.create_user(name), self.b.create_user(name)
        [a_ou] = self.a.add_project_member(ua, self.project_a)
        [b_ou] = self.b.add_project_member(ub, self.project_b)
        return a_ou, b_ou

    def start_worker(self, config_path: Path, *extra: str, code: Path | None = None) -> "WorkerProcess":
        worker = WorkerProcess(config_path, self.env, self.tmp, len(self.workers), list(extra), code)
        self.workers.append(worker)
        return worker


def uuid_of(entity: Any) -> str:
    return entity if isinstance(entity, str) else entity.uuid


def make_setup(federation: Any, tmp: Path) -> Setup:
    a, b = federation.add_site("a"), federation.add_site("b")
    parts = {}
    for s in (a, b):
        sp = s.create_customer("sp")
        c = s.create_customer("c", owners=[])
        off = s.create_offering(sp, "hpc")
        proj = s.create_project(c, "p")
        s.create_resource(off, proj, backend_id="acc1")
        parts[s.name] = (off, proj)
    return Setup(a=a, b=b, offering_a=parts["a"][0], offering_b=parts["b"][0],
                 project_a=parts["a"][1], project_b=parts["b"][1], tmp=tmp)


class WorkerProcess:
    """``usync worker`` as a subprocess (memory store), its log in a file."""

    def __init__(self, config_path: Path, env: dict[str, str], tmp: Path, n: int, extra: list[str],
                 code: Path | None = None) -> None:
        """``code``: another tree of usync to run (an older release), with this venv."""
        self.port = free_port()
        self.log_path = tmp / f"worker-{n}.log"
        self.log = open(self.log_path, "ab")
        command = [USYNC] if code is None else [str(ROOT / ".local/venv/bin/python"), "-c",
                                                  "import sys; from streams.cli import main; sys.exit(main())"]
        self.args = [*command, "worker", "--config", str(config_path), "--store", "memory",
                     "--web-port", str(self.port), "--data-dir", str(tmp / f"data-{n}"), *extra]
        self.env = env if code is None else {**env, "PYTHONPATH": str(code)}
        #: Sent with every request: the operator token when the config names one (``web_token_env``).
        self.headers: dict[str, str] = {}
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=code or ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=5, headers=self.headers) as client:
                return await client.get(self.url + path)
        except httpx.HTTPError:
            return None

    async def answers(self, timeout: float = 60) -> None:
        """``/health`` answers 200: from the worker, or from its stand-in while it creates its
        topics (streams.worker)."""
        await until(lambda: self._health_is(200), timeout, "the worker's /health")

    async def ready(self, timeout: float = 60) -> None:
        """The worker's own web server answers (the stand-in serves no /metrics)."""
        async def up() -> bool:
            if not await self._health_is(200):
                return False
            r = await self.get("/metrics")
            return r is not None and r.status_code == 200
        await until(up, timeout, "the worker's web server")

    async def _health_is(self, status: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        r = await self.get("/health")
        return r is not None and r.status_code == status

    async def table(self) -> dict:
        r = await self.get("/usync/table/")
        assert r is not None and r.status_code == 200
        return r.json()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, 15)
        self.log.close()


async def read_all(topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> list[Any]:
    """Every record of ``topic`` now (ConsumerRecords), read without a group."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                return out
            for messages in batch.values():
                out.extend(messages)
    finally:
        await consumer.stop()


def patches(site: Any, since: int = 0) -> list[Any]:
    return [c for c in site.calls.since(since) if c.method == "PATCH"]


def last_seq(site: Any) -> int:
    return site.calls.log[-1].seq if site.calls.log else 0


def usernames(site: Any, offering: Any) -> dict[str, str]:
    """user_username -> username of the offering's users."""
    return {site.store.users[ou.user].username: ou.username or "" for ou in site.offering_users(offering)}


async def bridge_and_worker(s: Setup, bridge: Callable[[Config], Awaitable[Any]], path: Path,
                            *worker_args: str, code: Path | None = None) -> tuple[Any, WorkerProcess]:
    """The in-process bridge (the ``bridge`` fixture) and a first worker for the config at
    ``path``, once the worker answers and the bridge is subscribed on both sites."""
    b = await bridge(s.config(path))
    worker = s.start_worker(path, *worker_args, code=code)
    await worker.ready()
    await until(lambda: bridge_ready(b, 2), 30, "the bridge's subscriptions")
    return b, worker


def bridge_ready(bridge: Any, relays: int) -> bool:
    """Every site's relay is subscribed (events published from now on reach Kafka)."""
    return len(bridge.health.components) >= relays and bridge.health.ready


# -- the correct stage's partitions (tests/app/test_federation.py, bench/bench_budget.py) ----

ASSIGNED = re.compile(r"sink: handling partitions \[([\d, ]*)\]")


def partition_of(key: str, partitions: int) -> int:
    """The correction's partition as the worker's producer picks it (Kafka's default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def assignments(s: Setup) -> list[set[int]]:
    """Each worker's correction partitions, from the last assignment its log shows."""
    out = []
    for worker in s.workers:
        found = ASSIGNED.findall(worker.log_text())
        out.append({int(p) for p in found[-1].split(",") if p.strip()} if found else set())
    return out


async def settled_assignment(s: Setup, partitions: int) -> list[set[int]]:
    """The sink group's assignment (each worker's partitions, from its log) once every
    partition is owned and it has not changed for 3 s."""
    last, since = None, time.monotonic()
    while True:
        now = assignments(s)
        if now != last:
            last, since = now, time.monotonic()
        elif set().union(*now) == set(range(partitions)) and time.monotonic() - since >= 3:
            return now
        if time.monotonic() - since > 60:
            raise RuntimeError(f"the sink group did not settle: {now}")
        await asyncio.sleep(0.2)  # sampling log files: no event to wait on


def pick_users(offering_b: str, on: set[int], partitions: int, n: int, heavy: float, prefix: str = "u") -> list[str]:
    """``n`` usernames (``<prefix>000000`` ...) whose corrections are keyed to partitions
    ``on`` for ``heavy`` of them (0..1), to the other partitions for the rest."""
    want_heavy = round(n * heavy)
    picked: list[str] = []
    heavy_count, i = 0, 0
    while len(picked) < n:
        name = f"{prefix}{i:06d}"
        i += 1
        on_heavy = partition_of(f"b:{offering_b}:{name}", partitions) in on
        if on_heavy and heavy_count < want_heavy:
            picked.append(name)
            heavy_count += 1
        elif not on_heavy and len(picked) - heavy_count < n - want_heavy:
            picked.append(name)
    return picked


def faust_leader(s: Setup) -> int | None:
    """The worker that ran the start-up reconcile pass (the faust group's leader's timer), if one has."""
    return next((i for i, w in enumerate(s.workers) if "usync.reconciler: reconciled link" in w.log_text()), None)

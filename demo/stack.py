"""What the demo, its test and the side-by-side benchmark share.

- :func:`populate`: two simulated sites (B holds usernames, A follows) with offerings and users.
- :class:`Tracker`: exact convergence bookkeeping by hooking the simulators' stores (no polling):
  which A offering users differ from B, and, per change, how long until A equals B.
- :class:`UsyncStack`: the real ``usync bridge`` and ``usync worker`` as subprocesses of the
  ``usync`` CLI, with a generated configuration (unique topics and app id) in a temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from waldursim.broker import local_port
from waldursim.models import PROJECT_MEMBER, SLURM, OfferingUserState

ROOT = Path(__file__).resolve().parents[1]
USYNC = str(Path(sys.executable).with_name("usync"))
#: The brokers ``make services`` runs (``USYNC_PORT_OFFSET`` and the per-port variables as services/common.sh).
WEB_STOMP = f"ws://127.0.0.1:{local_port('RABBITMQ_WEB_STOMP_PORT', 15674)}/ws"
KAFKA = f"127.0.0.1:{local_port('KAFKA_PORT', 9092)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the two sites -----------------------------------------------------------------------------


@dataclass
class OfferingPair:
    name: str
    a: Any  # Offering on A
    b: Any  # Offering on B
    users: list[tuple[Any, Any]] = field(default_factory=list)  # (a_ou, b_ou)
    projects: tuple[Any, Any] = (None, None)


def populate(a: Any, b: Any, *, users: int, offerings: list[str], a_converged: bool,
             spread: bool = True) -> list[OfferingPair]:
    """Offerings on both sites and ``users`` identities ("user00042" on both sites).

    ``spread``: user i is a member of offering i % len(offerings) (so ``users`` offering users
    per site in all); otherwise every user is a member of every offering. B's offering users
    are OK with username ``<user>-b``; A's are OK with the same username if ``a_converged``,
    else auto-created-style Requested with an empty username. Loaded directly, without
    events (nobody is subscribed yet), as waldursim's scenarios do.
    """
    pairs = []
    for name in offerings:
        sides = []
        for site in (a, b):
            provider = site.create_customer(f"{name}-provider")
            offering = site.create_offering(provider, f"{name}-{site.name}", type=SLURM)
            project = site.create_project(site.create_customer(f"{name}-customer"), f"{name}-project")
            site.create_resource(offering, project, f"{name}-allocation", backend_id=f"{name}-acc")
            sides.append((offering, project))
        pair = OfferingPair(name, sides[0][0], sides[1][0])
        pair.projects = (sides[0][1], sides[1][1])
        pairs.append(pair)
    for i in range(users):
        user_username = f"user{i:05d}"
        members = [pairs[i % len(pairs)]] if spread else pairs
        for pair in members:
            ous = []
            for site, offering, project, converged in ((a, pair.a, pair.projects[0], a_converged),
                                                       (b, pair.b, pair.projects[1], True)):
                store = site.store
                user = store.users_by_username.get(user_username) or store.create_user(user_username)
                project.members[user.uuid] = PROJECT_MEMBER
                username = f"{user_username}-b" if converged else ""
                ous.append(store.create_offering_user(
                    offering, user, username=username,
                    state=OfferingUserState.OK if username else OfferingUserState.REQUESTED, emit=False))
            pair.users.append((ous[0], ous[1]))
    return pairs


# -- convergence ------------------------------------------------------------------------------


class Tracker:
    """Which A offering users differ from their B counterpart, updated on every store change.

    Hooks ``set_username`` (PATCHes and event-emitting edits) and ``drift_username`` (silent
    edits) of both stores. A change that makes a pair differ starts a clock; the change on A
    that makes it equal again stops it: that span is the pair's time to converge.
    """

    def __init__(self, a: Any, b: Any, pairs: list[OfferingPair]) -> None:
        self.a, self.b = a, b
        self.partner_of_b: dict[str, str] = {}
        self.b_of_a: dict[str, str] = {}
        for pair in pairs:
            for a_ou, b_ou in pair.users:
                self.partner_of_b[b_ou.uuid] = a_ou.uuid
                self.b_of_a[a_ou.uuid] = b_ou.uuid
        self.total = len(self.b_of_a)
        self.mismatched: set[str] = {
            a_uuid for a_uuid, b_uuid in self.b_of_a.items()
            if (a.store.offering_users[a_uuid].username or "") != (b.store.offering_users[b_uuid].username or "")
        }
        self.started: dict[str, float] = {}  # a_uuid -> monotonic time the pair started to differ
        self.latencies: list[float] = []  # seconds, one per pair converged since the last reset
        self.converged_at = time.monotonic()
        self._converged = asyncio.Event()
        self._update_event()
        self._hook(a, self._on_a)
        self._hook(b, self._on_b)

    def _hook(self, site: Any, callback: Callable[[str], None]) -> None:
        store = site.store
        for method in ("set_username", "drift_username"):
            original = getattr(store, method)

            def hooked(ref: Any, username: Any, _original: Any = original, **options: Any) -> Any:
                ou = _original(ref, username, **options)  # a PATCH passes its actor (the event log's)
                callback(ou.uuid)
                return ou

            setattr(store, method, hooked)

    def _check(self, a_uuid: str) -> None:
        a_name = self.a.store.offering_users[a_uuid].username or ""
        b_name = self.b.store.offering_users[self.b_of_a[a_uuid]].username or ""
        now = time.monotonic()
        if a_name == b_name:
            if a_uuid in self.mismatched:
                self.mismatched.discard(a_uuid)
                started = self.started.pop(a_uuid, None)
                if started is not None:
                    self.latencies.append(now - started)
        else:
            self.mismatched.add(a_uuid)
            self.started.setdefault(a_uuid, now)
        self._update_event()

    def _on_a(self, a_uuid: str) -> None:
        if a_uuid in self.b_of_a:
            self._check(a_uuid)

    def _on_b(self, b_uuid: str) -> None:
        a_uuid = self.partner_of_b.get(b_uuid)
        if a_uuid is not None:
            self._check(a_uuid)

    def _update_event(self) -> None:
        if self.mismatched:
            self._converged.clear()
        elif not self._converged.is_set():
            self.converged_at = time.monotonic()
            self._converged.set()

    def start_clocks(self, at: float) -> None:
        """Pairs that differ now count from ``at`` (the initial sync: from the worker's start)."""
        for a_uuid in self.mismatched:
            self.started[a_uuid] = at

    def reset_latencies(self) -> None:
        self.latencies = []

    @property
    def converged(self) -> int:
        return self.total - len(self.mismatched)

    async def wait_converged(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._converged.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- the usync processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Child preexec: SIGTERM when the demo dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, preexec_fn=_die_with_parent,
                                     # own session: a terminal's Ctrl-C reaches the demo only, which
                                     # then stops its children in order (worker, then bridge)
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class StackError(RuntimeError):
    pass


class UsyncStack:
    """``usync bridge`` + ``usync worker`` for two sites and one link per offering pair."""

    def __init__(self, a: Any, b: Any, pairs: list[OfferingPair], tmp: Path, *, label: str = "demo",
                 requests_per_second: float = 500.0, concurrency: int = 32, partitions: int = 4,
                 broker_url: str = WEB_STOMP, kafka_bootstrap: str = KAFKA) -> None:
        self.a, self.b, self.pairs, self.tmp = a, b, pairs, tmp
        self.kafka_bootstrap = kafka_bootstrap
        self.suffix = f"{label}-{uuid.uuid4().hex[:10]}"
        self.bridge_port = free_port()
        self.worker_port = free_port()
        self.env = {**os.environ, "USYNC_TOKEN_A": a.staff_token, "USYNC_TOKEN_B": b.staff_token}
        self.children: list[Child] = []
        self.config_path = tmp / "usync.toml"
        self.topics = [f"{self.suffix}.events", f"{self.suffix}.dlq", f"{self.suffix}.outcomes"]
        rates = f"{{ requests_per_second = {requests_per_second}, burst = {int(requests_per_second)}, concurrency = {concurrency} }}"
        text = (
            f'app_id = "usync-{self.suffix}"\nreconcile_interval = 3600\n'
            f'data_dir = "{tmp / "data"}"\nweb_port = {self.worker_port}\n'
            f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
            f'events_topic = "{self.topics[0]}"\ndlq_topic = "{self.topics[1]}"\n'
            f'outcomes_topic = "{self.topics[2]}"\npartitions = {partitions}\n'
        )
        for site, env in ((a, "USYNC_TOKEN_A"), (b, "USYNC_TOKEN_B")):
            text += (f'[sites.{site.name}]\napi_url = "{site.url}"\ntoken_env = "{env}"\n'
                     f'broker_url = "{broker_url}"\nregister = true\nrates = {rates}\n')
        for pair in pairs:
            text += (f'[[links]]\nname = "{pair.name}"\nreconcile = true\n'
                     f'target = {{ site = "{a.name}", offering = "{pair.a.uuid}" }}\n'
                     f'source = {{ site = "{b.name}", offering = "{pair.b.uuid}" }}\n')
        self.config_path.write_text(text)

    # processes

    def start_bridge(self) -> None:
        self.bridge = self._spawn("bridge", ["bridge", "--config", str(self.config_path),
                                             "--health-port", str(self.bridge_port)])

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", ["worker", "--config", str(self.config_path), "--store", "memory",
                                             "--web-port", str(self.worker_port),
                                             "--data-dir", str(self.tmp / "worker-data")])

    def _spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, [USYNC, "--log-level", "warning", *args], self.env, self.tmp / f"{name}.log")
        self.children.append(child)
        return child

    def stop(self) -> None:
        # The worker first (it reads what the bridge writes), then the bridge.
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise StackError(f"usync {child.name} exited with {child.proc.returncode}; "
                                 f"its log ({child.log_path}) ends:\n{child.tail()}")

    # readiness and figures

    async def _get(self, client: httpx.AsyncClient, port: int, path: str) -> httpx.Response | None:
        try:
            return await client.get(f"http://127.0.0.1:{port}{path}")
        except httpx.HTTPError:
            return None

    async def wait_http(self, port: int, path: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                self.check_alive()
                r = await self._get(client, port, path)
                if r is not None and r.status_code == 200:
                    return
                if time.monotonic() > deadline:
                    raise StackError(f"{what} not ready after {timeout:.0f} s")
                await asyncio.sleep(0.2)  # polling a readiness endpoint: no push signal exists

    async def bridge_ready(self, timeout: float = 60) -> None:
        await self.wait_http(self.bridge_port, "/health/ready", "the bridge's subscriptions", timeout)

    async def worker_ready(self, timeout: float = 90) -> None:
        await self.wait_http(self.worker_port, "/health", "the worker's web server", timeout)

    async def reconcile(self, timeout: float = 120) -> None:
        """Ask the worker for a reconcile pass now (answers once every snapshot page is written)."""
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.post(f"http://127.0.0.1:{self.worker_port}/usync/reconcile/")
            r.raise_for_status()

    async def figures(self, client: httpx.AsyncClient) -> dict[str, float]:
        """Counters from the bridge's and the worker's /metrics (missing = 0)."""
        out = {"relayed": 0.0, "corrected": 0.0, "corrections": 0.0, "folded": 0.0}
        for port, wanted in ((self.bridge_port, {"usync_bridge_relayed_total": "relayed"}),
                             (self.worker_port, {"usync_corrections_requested_total": "corrections",
                                                 "usync_events_folded_total": "folded"})):
            r = await self._get(client, port, "/metrics")
            if r is None or r.status_code != 200:
                continue
            for family in text_string_to_metric_families(r.text):
                for sample in family.samples:
                    if sample.name in wanted:
                        out[wanted[sample.name]] += sample.value
                    elif sample.name == "usync_outcomes_total" and sample.labels.get("action") == "corrected":
                        out["corrected"] += sample.value
        return out

    async def delete_topics(self) -> None:
        """Best effort: drop this run's topics (ours and the worker's internal ones, all named by suffix)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap, request_timeout_ms=10000)
        with contextlib.suppress(Exception):
            await admin.start()
            try:
                names = [t for t in await admin.list_topics() if self.suffix in t]
                if names:
                    await admin.delete_topics(names)
            finally:
                await admin.close()


def api_calls(site: Any) -> int:
    return sum(site.calls.counts.values())


def patch_calls(site: Any) -> int:
    return sum(n for endpoint, n in site.calls.counts.items() if endpoint.startswith("PATCH "))


async def settle(stack: UsyncStack, a: Any, b: Any, *, quiet: float = 1.0, timeout: float = 60.0) -> bool:
    """Await a quiescent pipeline: both sites' publishers drained, then the bridge's and the
    worker's counters and both sites' API call counts unchanged for ``quiet`` seconds.

    Used between phases, so one phase's tail (echo events of usync's own PATCHes and the
    re-verifications they cause) does not overlap the next phase's changes.
    """
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        last: tuple[Any, ...] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            await a.publisher.drain(max(1.0, deadline - time.monotonic()))
            await b.publisher.drain(max(1.0, deadline - time.monotonic()))
            stack.check_alive()
            figures = await stack.figures(client)
            sample = (tuple(sorted(figures.items())), api_calls(a), api_calls(b))
            if sample != last:
                last, since = sample, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
            await asyncio.sleep(0.1)  # sampling period of the quiescence check
    return False

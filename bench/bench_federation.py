"""A federation of simulated sites under a sustained change rate (not part of pytest).

    .local/venv/bin/python bench/bench_federation.py --quick          # 6 sites, 12 links (one 1 -> 3 fan-out), 2 workers, <= 60 s
    .local/venv/bin/python bench/bench_federation.py --full --rate 50 # issue 16's shape at the rate this box can take

The federation is ``waldursim.federation_scenario`` (real RabbitMQ): sites ``s0`` ..
``s<N-1>``, ``s0``'s one offering feeding ``--fanout`` targets, every other link its own
pair of offerings with ``--users`` users, the first of them ``--big-users`` users when
that is > 0, converged at the start (loaded without events). The real ``usync bridge``
and ``--workers`` ``usync worker`` processes (memory store, one group) run with every
site capped at ``--cap`` calls/s (burst ``--burst``), plus one idle worker (its own app
and empty topics, no reconcile: the same code and configuration holding no row). After
the start-up reconcile has settled, ``--rate`` usernames per second change on the sources
for ``--seconds`` (``waldursim.ChangeDriver``, paced, seeded). Measured from the
simulator's stores and call logs and the workers:

- latency from a change on the source to the PATCH that makes each of its targets equal
  (p50, p99, over the newest change of each user and each of its targets);
- for each site, the most API calls in any 1 s window, against cap + burst (``cap_ok``);
- GETs on sources per change (``source_reads_per_change``: reads of the changed
  sources' offering users, over changes; the fan-out shares one read), and API calls on
  targets per correction; PATCHes against corrections;
- worker RSS: each worker's ``VmRSS`` (``/proc/<pid>/status``) once the start-up reconcile
  is quiet and at the end, with the rows its table holds (``/usync/drift/``'s ``rows``);
  **bytes per row** = (the worker's RSS - the idle worker's RSS at the same moment) / its
  rows, and over all workers sum(growth) / sum(rows) (the idle worker is the baseline of
  the interpreter, faust, the clients and the configuration; with ``--quick``'s ~1,000
  rows per worker the growth is mostly allocator noise, the full shape's ~35k is the figure);
- a full reconcile pass, triggered after the changes through the first worker's
  ``POST /usync/reconcile/`` (every link, as the periodic pass): seconds until it answers
  (every page written) and the list GETs per side of the largest link (the big offering's
  when ``--big-users`` is set, else one with an unshared source: ``ceil(N/300)`` each),
  from the simulator's call logs.

``--full`` is issue 16's shape: 50 sites, 200 links (one identity site -> 20 targets),
100k users in all on the sources (one offering of 50,000; 180 offerings of 278), 3
workers, 1,000 changes/s for 60 s; every option still scales it. On this shared 2-core
box the full rate cannot run: the sink alone costs ~0.75 ms of CPU per PATCH (README
figures), so 1,000 changes/s (~1,100 corrections/s with the fan-out) is most of a core
for PATCHes alone, before the live reads, the fold, Kafka, RabbitMQ, the bridge and the
simulator, next to other engineers' tests. The scaled-down shape to run here is the full
federation (50 sites, 200 links, 100k users, 3 workers) at 50 changes/s for 60 s:
``bench/bench_federation.py --full --rate 50``. The defaults are ``--quick``'s. The last
line is always
``federation: converged=<bool> p99_ms=<int> cap_ok=<bool> source_reads_per_change=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from demo.stack import Child, USYNC, free_port, percentile  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ  # noqa: E402
from waldursim import ChangeDriver, Federation, FederationLink, FederationSpec  # noqa: E402
from waldursim.federation import populate_federation, token_env, write_usync_config  # noqa: E402

T = TypeVar("T")
QUICK = dict(sites=6, links=12, fanout=3, users=100, big_users=0, workers=2, partitions=4, rate=20.0, seconds=15.0,
             cap=40.0, burst=10, deadline=20.0)
FULL = dict(sites=50, links=200, fanout=20, users=278, big_users=50_000, workers=3, partitions=12, rate=1000.0,
            seconds=60.0, cap=100.0, burst=20, deadline=120.0)
PAGE = 300  # the reconciler's page size


class Stack:
    """The bridge, the measured workers and the idle one."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.workers: list[tuple[Child, int]] = []  # (child, web port)
        self.idle: tuple[Child, int] | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str], tmp: Path) -> Child:
        child = Child(name, [USYNC, "--log-level", "warning", *args], env, tmp / f"{name}.log")
        self.children.append(child)
        return child

    def worker(self, name: str, config: Path, env: dict[str, str], tmp: Path, *extra: str) -> tuple[Child, int]:
        port = free_port()
        child = self.spawn(name, ["worker", "--config", str(config), "--store", "memory", "--web-port", str(port),
                                  "--data-dir", str(tmp / name), *extra], env, tmp)
        return child, port

    async def stop(self) -> None:
        for child in reversed(self.children):
            await asyncio.to_thread(child.stop)


def options(args: argparse.Namespace) -> argparse.Namespace:
    """The preset (``--full`` or the quick defaults), then every option given explicitly."""
    preset = FULL if args.full else QUICK
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


async def wait_http(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)  # polling a readiness endpoint: no push signal exists
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def converged(federation: Federation, links: list[FederationLink]) -> bool:
    for link in links:
        src, tgt = federation[link.source_site].store.offering_users, federation[link.target_site].store.offering_users
        if any(src[s].username != tgt[t].username for s, t in link.pairs.values()):
            return False
    return True


async def steady(sample: Callable[[], Awaitable[T]], count: Callable[[T], int], seconds: float, timeout: float,
                 at_least: int = 0, interval: float = 0.2) -> T:
    """The last sample once ``count`` of it is ``at_least`` and has not changed for
    ``seconds``, or at the timeout. Sampling: what the bench waits for has no event."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        value = await sample()
        total = count(value)
        if total != last:
            last, since = total, time.monotonic()
        elif total >= at_least and time.monotonic() - since >= seconds:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


async def quiet(sites: list[Any], seconds: float, timeout: float) -> None:
    """Until no site receives an API call for ``seconds`` (the start-up reconcile is over)."""
    async def calls() -> int:
        return sum(sum(s.calls.counts.values()) for s in sites)
    await steady(calls, lambda n: n, seconds, timeout)


def busiest(site: Any, since: float) -> int:
    times = sorted(c.time for c in site.calls.log if c.time >= since and c.path.startswith("/api/"))
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


async def memory(stack: Stack) -> tuple[list[tuple[int, int]], int]:
    """Each worker's (RSS KiB, rows), and the idle worker's RSS KiB."""
    out = []
    async with httpx.AsyncClient(timeout=120) as client:
        for child, port in stack.workers:
            rows = (await client.get(f"http://127.0.0.1:{port}/usync/drift/")).json()["rows"]
            out.append((rss_kib(child.proc.pid), rows))
    assert stack.idle is not None
    return out, rss_kib(stack.idle[0].proc.pid)


async def settled_rows(stack: Stack, rows: int, timeout: float) -> tuple[list[tuple[int, int]], int]:
    """``memory`` once the workers' tables hold at least ``rows`` between them and have not
    grown for 5 s (the start-up reconcile's pages folded, not only listed, and faust's
    standby copies restored: with more than one worker each row is held twice), or at the timeout."""
    return await steady(lambda: memory(stack), lambda sample: sum(n for _r, n in sample[0]), 5.0, timeout,
                        at_least=rows, interval=1.0)


def memory_line(when: str, workers: list[tuple[int, int]], idle: int) -> str:
    growth = sum(max(0, r - idle) * 1024 for r, _rows in workers)
    rows = sum(n for _r, n in workers)
    per = " ".join(f"w{i}={r / 1024:.0f}MiB/{n}rows" + (f"({(r - idle) * 1024 / n:.0f}B/row)" if n else "")
                   for i, (r, n) in enumerate(workers))
    return (f"worker RSS {when}: {per}; idle worker {idle / 1024:.0f} MiB; "
            f"bytes per row={growth / rows:.0f}" if rows else f"worker RSS {when}: {per}; no rows")


def build(args: argparse.Namespace) -> tuple[Federation, FederationSpec, list[FederationLink]]:
    spec = FederationSpec(sites=args.sites, links=args.links, fanout=args.fanout, users=args.users,
                          big_users=args.big_users, seed=7, kafka_bootstrap=KAFKA_BOOTSTRAP,
                          broker_url=RABBITMQ.web_stomp_url, partitions=args.partitions, cap=args.cap,
                          burst=args.burst)
    federation = Federation(RABBITMQ.broker_admin(), seed=7, publish_rate=0)
    return federation, spec, populate_federation(federation, spec, progress=sys.stderr)


async def start(stack: Stack, federation: Federation, spec: FederationSpec, links: list[FederationLink],
                args: argparse.Namespace, tmp: Path) -> None:
    """Configurations, the bridge, the workers and the idle worker, until each is ready."""
    suffix = uuid.uuid4().hex[:8]
    path, idle_path = tmp / "usync.toml", tmp / "idle.toml"
    write_usync_config(path, federation, links, FederationSpec(**{**_fields(spec), "topic_prefix": f"fed-{suffix}"}),
                       app_id=f"usync-fed-{suffix}", data_dir=str(tmp / "data"))
    write_usync_config(idle_path, federation, links,
                       FederationSpec(**{**_fields(spec), "topic_prefix": f"fed-{suffix}-idle"}),
                       app_id=f"usync-fed-{suffix}-idle", data_dir=str(tmp / "idle-data"))
    env = {**os.environ, **{token_env(spec, s.name): s.staff_token for s in federation.sites.values()}}
    bridge_port = free_port()
    bridge = stack.spawn("bridge", ["bridge", "--config", str(path), "--health-port", str(bridge_port)], env, tmp)
    stack.workers = [stack.worker(f"worker{i}", path, env, tmp) for i in range(args.workers)]
    stack.idle = stack.worker("idle", idle_path, env, tmp, "--no-reconcile")
    await wait_http(f"http://127.0.0.1:{bridge_port}/health/ready", bridge, 90 + args.sites * 3)
    for child, port in [*stack.workers, stack.idle]:
        await wait_http(f"http://127.0.0.1:{port}/health/ready", child, 120 + args.sites * 3)


def _fields(spec: FederationSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__struct_fields__}


def latencies(federation: Federation, links: list[FederationLink], driver: ChangeDriver,
              marks: dict[str, int]) -> list[float]:
    """Seconds from the newest change of each user to the first PATCH of each of its targets after it."""
    by_source: dict[str, list[FederationLink]] = defaultdict(list)
    for link in links:
        by_source[link.source_offering].append(link)
    patches: dict[str, dict[str, list[float]]] = {}
    for site in federation.sites.values():
        times: dict[str, list[float]] = defaultdict(list)
        for c in site.calls.since(marks[site.name]):
            if c.method == "PATCH":
                times[c.path.rstrip("/").rsplit("/", 1)[-1]].append(c.time)
        patches[site.name] = times
    newest = {(c.offering, c.user_username): c.at for c in driver.changes}
    out = []
    for (offering, user), at in newest.items():
        for link in by_source[offering]:
            hits = [t for t in patches[link.target_site].get(link.pairs[user][1], ()) if t >= at]
            if hits:
                out.append(min(hits) - at)
    return out


def source_reads(federation: Federation, links: list[FederationLink], marks: dict[str, int]) -> int:
    source_ous = {s for link in links for s, _t in link.pairs.values()}
    source_offs = {link.source_offering for link in links}
    reads = 0
    for site in federation.sites.values():
        for c in site.calls.since(marks[site.name]):
            if c.method == "GET" and (c.path.rstrip("/").rsplit("/", 1)[-1] in source_ous
                                      or any(o in c.query for o in source_offs)):
                reads += 1
    return reads


async def reconcile_pass(federation: Federation, links: list[FederationLink], stack: Stack) -> str:
    """A full pass through the first worker's ``POST /usync/reconcile/``; the largest link's list GETs per side."""
    sharing = defaultdict(int)
    for link in links:
        sharing[link.source_offering] += 1
    big = max(links, key=lambda link: (len(link.pairs), -sharing[link.source_offering]))  # prefer an unshared source
    marks = {s.name: s.calls.log[-1].seq if s.calls.log else 0 for s in federation.sites.values()}
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=3600) as client:
        answer = (await client.post(f"http://127.0.0.1:{stack.workers[0][1]}/usync/reconcile/")).json()
    seconds = time.monotonic() - t0

    def gets(site: str, offering: str) -> int:
        return sum(1 for c in federation[site].calls.since(marks[site])
                   if c.method == "GET" and c.path.endswith("/marketplace-offering-users/") and offering in c.query)

    listed = sum(answer.get("reconciled", {}).values())
    expected = math.ceil(len(big.pairs) / PAGE)
    return (f"reconcile pass (POST /usync/reconcile/, {len(links)} links, {listed} users listed): {seconds:.1f} s; "
            f"largest link {big.name} ({len(big.pairs)} users): {gets(big.source_site, big.source_offering)} GETs on "
            f"the source (listed by {sharing[big.source_offering]} link(s)), "
            f"{gets(big.target_site, big.target_offering)} on the target (ceil(N/{PAGE}) = {expected} per link)")


async def changes(args: argparse.Namespace, federation: Federation, links: list[FederationLink]) -> ChangeDriver:
    """The paced changes, then until every target equals its source or the deadline."""
    driver = ChangeDriver(federation, links, args.rate, seed=7, limit=int(args.rate * args.seconds))
    driver.start()
    await driver.wait()
    deadline = time.monotonic() + args.deadline
    while not converged(federation, links) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # sampling the stores; the last PATCH has no other signal here
    return driver


async def run(args: argparse.Namespace) -> str:
    federation, spec, links = build(args)
    sites = list(federation.sites.values())
    await federation.start()
    tmp = Path(tempfile.mkdtemp(prefix="usync-fed-"))
    stack = Stack()
    try:
        started = time.time()
        await start(stack, federation, spec, links, args, tmp)
        await quiet(sites, 2.0, 120 + len(links) * 2)
        settled = await settled_rows(stack, sum(len(link.pairs) for link in links), 120 + len(links))
        marks = {s.name: s.calls.log[-1].seq if s.calls.log else 0 for s in sites}
        driver = await changes(args, federation, links)
        ok = converged(federation, links)
        await quiet(sites, 1.0, 30)
        lat = latencies(federation, links, driver, marks)
        reads = source_reads(federation, links, marks)
        n = len(driver.changes)
        groups = defaultdict(int)
        for link in links:
            groups[link.source_offering] += 1
        corrections = sum(groups[c.offering] for c in driver.changes)
        target_calls = sum(len(s.calls.since(marks[s.name])) for s in sites) - reads
        patches = sum(1 for s in sites for c in s.calls.since(marks[s.name]) if c.method == "PATCH")
        windows = {s.name: busiest(s, started) for s in sites}
        cap_ok = all(w <= args.cap + args.burst for w in windows.values())
        end = await memory(stack)
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        print(f"sites={args.sites} links={args.links} fanout=1->{args.fanout} users/offering={args.users} "
              f"big={args.big_users} workers={args.workers} changes={n} at {args.rate:.0f}/s corrections={corrections}")
        print(f"latency change->target corrected: p50={p50:.0f} ms p99={p99:.0f} ms over {len(lat)} (change, target)")
        print(f"GETs on sources per change={reads / n:.2f}; calls on targets per correction="
              f"{target_calls / corrections:.2f}; PATCHes={patches} for {corrections} corrections")
        print(f"busiest 1 s window per site (cap {args.cap:.0f} + burst {args.burst}): "
              + " ".join(f"{k}={v}" for k, v in sorted(windows.items(), key=lambda kv: int(kv[0][1:]))))
        print(memory_line("after the start-up reconcile", *settled))
        print(memory_line("at the end", *end))
        print(await reconcile_pass(federation, links, stack))
        return (f"federation: converged={ok} p99_ms={int(p99) if lat else -1} cap_ok={cap_ok} "
                f"source_reads_per_change={reads / n:.2f}")
    finally:
        await stack.stop()
        await federation.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the defaults: 6 sites, 12 links, 2 workers, <= 60 s")
    parser.add_argument("--full", action="store_true",
                        help="issue 16's shape: 50 sites, 200 links, 100k users (one offering of 50k), 3 workers, "
                             "1,000 changes/s for 60 s (scale it with the options, e.g. --rate 50)")
    for name, kind in (("sites", int), ("links", int), ("fanout", int), ("users", int), ("big-users", int),
                       ("workers", int), ("partitions", int), ("rate", float), ("seconds", float), ("cap", float),
                       ("burst", int), ("deadline", float)):
        parser.add_argument(f"--{name}", type=kind, default=None)
    print(asyncio.run(run(options(parser.parse_args()))))


if __name__ == "__main__":
    main()

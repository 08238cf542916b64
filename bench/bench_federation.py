"""A federation of simulated sites under a sustained change rate (not part of pytest).

    .local/venv/bin/python bench/bench_federation.py --quick     # 6 sites, 12 links (one 1 -> 3 fan-out), 2 workers

Sites ``s0`` .. ``s<N-1>`` (waldursim, real RabbitMQ), each link its own pair of
offerings with ``--users`` users, converged at the start; ``s0``'s offering feeds
``--fanout`` targets, the other links go from ``s<k>`` to a neighbour. The real
``usync bridge`` and ``--workers`` ``usync worker`` processes (memory store, one group)
run with every site capped at ``--cap`` calls/s (burst ``--burst``). After the start-up
reconcile has settled, ``--rate`` usernames per second change on the sources for
``--seconds``. Measured from the simulator's stores and call logs:

- latency from a change on the source to the PATCH that makes each of its targets equal
  (p50, p99, over every (change, target));
- for each site, the most API calls in any 1 s window, against cap + burst (``cap_ok``);
- GETs on sources per change (``source_reads_per_change``: reads of the changed
  source's offering users, over changes; the fan-out shares one read), and API calls on
  targets per correction; PATCHes against corrections.

The full mode of issue 16 (50 sites, 200 links, 100k users, 3 workers, 1,000 changes/s)
is not run here: on this shared 2-core box, next to the brokers and other engineers'
tests, the sink alone costs ~0.75 ms of CPU per PATCH (README figures), so 1,000
changes/s over 200 links is several cores. The defaults are ``--quick``'s; the options
scale it up (``--sites 50 --links 200 --fanout 20 --users 500 --workers 3 --rate 1000``).
The last line is always
``federation: converged=<bool> p99_ms=<int> cap_ok=<bool> source_reads_per_change=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from demo.stack import Child, USYNC, free_port, percentile  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ  # noqa: E402
from waldursim import Federation  # noqa: E402
from waldursim.models import PROJECT_MEMBER, SLURM, OfferingUserState  # noqa: E402


class Link:
    def __init__(self, name: str, source: Any, target: Any, s_off: Any, t_off: Any) -> None:
        self.name, self.source, self.target, self.s_off, self.t_off = name, source, target, s_off, t_off
        self.pairs: dict[str, tuple[Any, Any]] = {}  # user -> (source ou, target ou)


def offering(site: Any, name: str) -> tuple[Any, Any]:
    provider = site.create_customer(f"{name}-sp")
    off = site.create_offering(provider, name, type=SLURM)
    project = site.create_project(site.create_customer(f"{name}-c", owners=[]), f"{name}-p")
    site.create_resource(off, project, f"{name}-alloc", backend_id=f"{name}-acc")
    return off, project


def member(site: Any, off: Any, project: Any, user_username: str, username: str) -> Any:
    store = site.store
    user = store.users_by_username.get(user_username) or store.create_user(user_username)
    project.members[user.uuid] = PROJECT_MEMBER
    return store.create_offering_user(off, user, username=username, state=OfferingUserState.OK, emit=False)


def build(federation: Federation, sites: int, links: int, fanout: int, users: int) -> list[Link]:
    nodes = [federation.add_site(f"s{i}") for i in range(sites)]
    out: list[Link] = []
    s_off, s_proj = offering(nodes[0], "fan")
    sources: list[tuple[Any, Any, Any]] = [(nodes[0], s_off, s_proj)] * fanout
    targets = [nodes[1 + i % (sites - 1)] for i in range(fanout)]
    for k in range(links - fanout):
        src = nodes[1 + k % (sites - 1)]
        off, proj = offering(src, f"l{k}")
        sources.append((src, off, proj))
        targets.append(nodes[(int(src.name[1:]) + 1 + k // (sites - 1)) % sites])
    for i, ((src, off, proj), tgt) in enumerate(zip(sources, targets)):
        t_off, t_proj = offering(tgt, f"t{i}")
        link = Link(f"link{i}", src, tgt, off, t_off)
        for u in range(users):
            name = f"{'fan' if off is s_off else f'l{i}'}u{u:05d}"
            s_ou = next((other.pairs[name][0] for other in out if other.s_off is off and name in other.pairs), None)
            if s_ou is None:
                s_ou = member(src, off, proj, name, f"{name}-v0")
            link.pairs[name] = (s_ou, member(tgt, t_off, t_proj, name, f"{name}-v0"))
        out.append(link)
    return out


def config(path: Path, links: list[Link], sites: list[Any], cap: float, burst: int, suffix: str, partitions: int) -> None:
    text = (f'app_id = "usync-fed-{suffix}"\nreconcile_interval = 3600\ndata_dir = "{path.parent / "data"}"\n'
            f'[kafka]\nbootstrap_servers = "{KAFKA_BOOTSTRAP}"\nevents_topic = "fed-{suffix}.events"\n'
            f'dlq_topic = "fed-{suffix}.dlq"\noutcomes_topic = "fed-{suffix}.outcomes"\npartitions = {partitions}\n')
    for site in sites:
        text += (f'[sites.{site.name}]\napi_url = "{site.url}"\ntoken_env = "USYNC_TOKEN_{site.name.upper()}"\n'
                 f'broker_url = "{RABBITMQ.web_stomp_url}"\nregister = true\n'
                 f"[sites.{site.name}.rates]\nrequests_per_second = {cap}\nburst = {burst}\nconcurrency = 8\n")
    for link in links:
        text += (f'[[links]]\nname = "{link.name}"\nreconcile = true\n'
                 f'target = {{ site = "{link.target.name}", offering = "{link.t_off.uuid}" }}\n'
                 f'source = {{ site = "{link.source.name}", offering = "{link.s_off.uuid}" }}\n')
    path.write_text(text)


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


def converged(links: list[Link]) -> bool:
    return all(s.username == t.username for link in links for s, t in link.pairs.values())


async def quiet(sites: list[Any], seconds: float, timeout: float) -> None:
    """Until no site receives an API call for ``seconds`` (the start-up reconcile is over)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(sum(s.calls.counts.values()) for s in sites)
        if total != last:
            last, since = total, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        await asyncio.sleep(0.2)  # sampling call counters: a quiet period has no event


def busiest(site: Any, since: float) -> int:
    times = sorted(c.time for c in site.calls.log if c.time >= since and c.path.startswith("/api/"))
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(args: argparse.Namespace) -> str:
    federation = Federation(RABBITMQ.broker_admin(), seed=7, publish_rate=0)
    links = build(federation, args.sites, args.links, args.fanout, args.users)
    sites = list(federation.sites.values())
    await federation.start()
    tmp = Path(tempfile.mkdtemp(prefix="usync-fed-"))
    path = tmp / "usync.toml"
    config(path, links, sites, args.cap, args.burst, uuid.uuid4().hex[:8], args.partitions)
    env = {**os.environ, **{f"USYNC_TOKEN_{s.name.upper()}": s.staff_token for s in sites}}
    children: list[Child] = []
    try:
        bridge_port = free_port()
        children.append(Child("bridge", [USYNC, "--log-level", "warning", "bridge", "--config", str(path),
                                         "--health-port", str(bridge_port)], env, tmp / "bridge.log"))
        ports = [free_port() for _ in range(args.workers)]
        for i, port in enumerate(ports):
            children.append(Child(f"worker{i}", [USYNC, "--log-level", "warning", "worker", "--config", str(path),
                                                 "--store", "memory", "--web-port", str(port),
                                                 "--data-dir", str(tmp / f"w{i}")], env, tmp / f"worker{i}.log"))
        started = time.time()
        await wait_http(f"http://127.0.0.1:{bridge_port}/health/ready", children[0], 90)
        for port, child in zip(ports, children[1:]):
            await wait_http(f"http://127.0.0.1:{port}/health/ready", child, 120)
        await quiet(sites, 2.0, 120)
        marks = {s.name: s.calls.log[-1].seq if s.calls.log else 0 for s in sites}

        by_source: dict[int, list[Link]] = defaultdict(list)
        for link in links:
            by_source[id(link.s_off)].append(link)
        groups = list(by_source.values())
        rng = random.Random(7)
        changes: list[tuple[float, str, list[Link], str]] = []  # (time, user, links, new username)
        t0 = time.monotonic()
        n = int(args.rate * args.seconds)
        for i in range(n):
            group = rng.choice(groups)
            user = rng.choice(sorted(group[0].pairs))
            s_ou = group[0].pairs[user][0]
            new = f"{user}-v{i + 1}"
            changes.append((time.time(), user, group, new))
            group[0].source.set_username(s_ou, new)
            delay = t0 + (i + 1) / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the load's pacing
        deadline = time.monotonic() + args.deadline
        while not converged(links) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # sampling the stores; the last PATCH has no other signal here
        ok = converged(links)
        await quiet(sites, 1.0, 30)

        latencies = []
        patches = {s.name: [c for c in s.calls.since(marks[s.name]) if c.method == "PATCH"] for s in sites}
        last_change: dict[tuple[int, str], tuple[float, str]] = {}
        for at, user, group, new in changes:
            last_change[(id(group[0].s_off), user)] = (at, new)
        for (_off, user), (at, _new) in last_change.items():  # latency of the newest change per user
            for link in next(g for g in groups if id(g[0].s_off) == _off):
                t_ou = link.pairs[user][1]
                hits = [c.time for c in patches[link.target.name] if t_ou.uuid in c.path and c.time >= at]
                if hits:
                    latencies.append(min(hits) - at)
        source_reads = 0
        source_ous = {ou.uuid for link in links for ou, _t in link.pairs.values()}
        source_offs = {link.s_off.uuid for link in links}
        for site in sites:
            for c in site.calls.since(marks[site.name]):
                if c.method == "GET" and (c.path.rstrip("/").rsplit("/", 1)[-1] in source_ous
                                          or any(o in c.query for o in source_offs)):
                    source_reads += 1
        corrections = sum(len(g) for _at, _u, g, _n in changes)
        target_calls = sum(len(s.calls.since(marks[s.name])) for s in sites) - source_reads
        windows = {s.name: busiest(s, started) for s in sites}
        cap_ok = all(w <= args.cap + args.burst for w in windows.values())
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        print(f"sites={args.sites} links={args.links} fanout=1->{args.fanout} users/link={args.users} "
              f"workers={args.workers} changes={n} at {args.rate:.0f}/s corrections={corrections}")
        print(f"latency change->target corrected: p50={p50:.0f} ms p99={p99:.0f} ms over {len(latencies)} (change, target)")
        print(f"GETs on sources per change={source_reads / n:.2f}; calls on targets per correction="
              f"{target_calls / corrections:.2f}; PATCHes={sum(map(len, patches.values()))} for {corrections} corrections")
        print("busiest 1 s window per site (cap " + f"{args.cap:.0f} + burst {args.burst}): "
              + " ".join(f"{k}={v}" for k, v in sorted(windows.items())))
        return (f"federation: converged={ok} p99_ms={int(p99) if latencies else -1} cap_ok={cap_ok} "
                f"source_reads_per_change={source_reads / n:.2f}")
    finally:
        for child in reversed(children):
            await asyncio.to_thread(child.stop)
        await federation.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the defaults: 6 sites, 12 links, 2 workers, ~30 s")
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--links", type=int, default=12)
    parser.add_argument("--fanout", type=int, default=3)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--cap", type=float, default=40.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=20.0)
    print(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()

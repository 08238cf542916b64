"""One site's API budget across three workers: is it spent on the work (not part of pytest)?

    .local/venv/bin/python bench/bench_budget.py --quick      # <= 90 s: 600 corrections, cap 30/s + 10
    .local/venv/bin/python bench/bench_budget.py --users 1200 --kill light

Sites a (target) and b (source) of the simulator, one link b -> a, ``--workers`` ``usync
worker`` processes (memory store, one group, ``--partitions`` correction partitions) with
both sites capped at ``--cap`` calls/s (burst ``--burst``). Once the group has settled, the
bench reads which worker owns which correction partitions (their logs) and makes
``--users`` users differ on B, ``--heavy`` of them (0.8) keyed to the first worker's
partitions and the rest spread over the others' ("uneven lanes"); a reconcile pass (``POST
/usync/reconcile/``) raises their corrections. When half of them are PATCHed, one worker is
killed (``kill -9``): the one with most of the work (``--kill heavy``, the worst case: its
partitions wait for the sink group's session timeout), or one of the others (``light``).
Then, A converged, ``--outage`` users change again and A is taken down (its port closed)
as soon as the reconcile pass that raises them has listed it, for ``--outage-seconds``; the bench says how long after A
is back its first call comes (the probe of a down site, ``streams.adapters.probe``).

Printed: each 1 s window's calls on each site; utilisation = calls on A / (cap x seconds)
over the seconds in which A's work was queued (from the reconcile pass's answer to the
last call of the run on A, the kill's gap included); the busiest 1 s window on A (from the
workers' start, the start-up reconcile included) against cap + burst; calls on A per
correction (every call on A from the pass on: GETs, PATCHes, the pass's list pages), users
read more than once, duplicate PATCHes; the workers' CPU per call on A; the load. The last
line is always
``budget: utilisation=<float> max_window=<int> cap_plus_burst=<int> calls_per_correction=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_federation import busiest  # noqa: E402
from tests.app.harness import (LinkSpec, Setup, faust_leader, make_setup, pick_users, settled_assignment,  # noqa: E402
                               until, usernames, uuid_of)
from tests.support.services import RABBITMQ  # noqa: E402
from waldursim.site import Federation  # noqa: E402

QUICK = dict(users=600, cap=30.0, burst=10, workers=3, partitions=6, heavy=0.8, outage=30, outage_seconds=8.0)


def windows(calls: list[Any], start: float, end: float) -> list[int]:
    counts = [0] * (int(end - start) + 1)
    for call in calls:
        if start <= call.time <= end:
            counts[int(call.time - start)] += 1
    return counts


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def reconcile(worker: Any) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        answer = await client.post(worker.url + "/usync/reconcile/")
        answer.raise_for_status()


async def run(args: argparse.Namespace) -> str:
    federation = Federation(RABBITMQ.broker_admin(), seed=7, publish_rate=0)
    tmp = Path(tempfile.mkdtemp(prefix="usync-budget-"))
    s = make_setup(federation, tmp)
    await federation.start()
    try:
        return await measure(s, args)
    finally:
        for worker in s.workers:
            worker.stop()
        await federation.stop()


async def measure(s: Setup, args: argparse.Namespace) -> str:
    rates = f"requests_per_second = {args.cap}\nburst = {args.burst}\nconcurrency = 8\ntimeout = 5.0"
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False, rates=rates,
                          partitions=args.partitions, reconcile_interval=3600.0)
    started = time.time()
    for _ in range(args.workers):
        s.start_worker(path)
    for worker in s.workers:
        await worker.ready(120)
    owned = await settled_assignment(s, args.partitions)
    await until(lambda: faust_leader(s) is not None, 30, "the start-up reconcile pass")
    leader = faust_leader(s)
    # the heavy worker and the one killed are not the faust leader: a new leader runs a
    # reconcile pass at once, and its re-reads are the reconciler's, not the hand-over's
    heavy, light = [i for i in range(len(s.workers)) if i != leader][:2]
    names = pick_users(uuid_of(s.offering_b), owned[heavy], args.partitions, args.users, args.heavy)
    pairs = {name: s.add_user(name) for name in names}
    for name, (_a_ou, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    print(f"load {load()}; {args.workers} workers, partitions {[sorted(p) for p in owned]}; {len(names)} corrections, "
          f"{args.heavy:.0%} on worker {heavy}'s partitions (faust leader: worker {leader}); cap {args.cap:.0f}/s + {args.burst}", file=sys.stderr)
    cpu0 = [cpu_seconds(w.proc.pid) for w in s.workers]
    mark_a = s.a.calls.log[-1].seq if s.a.calls.log else 0
    await reconcile(s.workers[1])
    queued_at = time.time()
    victim = heavy if args.kill == "heavy" else light
    await until(lambda: sum(1 for c in s.a.calls.since(mark_a) if c.method == "PATCH") >= len(names) // 2,
                600, "half of the corrections", interval=0.05)
    killed_at = time.time()
    s.workers[victim].kill9()
    print(f"kill -9 of worker {victim} at {time.strftime('%H:%M:%S')} (+{killed_at - queued_at:.1f} s)", file=sys.stderr)
    want = {name: f"{name}_b" for name in names}
    await until(lambda: usernames(s.a, s.offering_a) == want, 600, "A to converge", interval=0.2)
    run_calls = s.a.calls.since(mark_a)
    last_call = max(c.time for c in run_calls)
    cpu = sum(cpu_seconds(w.proc.pid) - c for w, c in zip(s.workers, cpu0) if w.proc.poll() is None)
    report_run(s, args, run_calls, names, started, queued_at, killed_at, last_call, victim, cpu)
    back_after = await outage(s, args, pairs) if args.outage else None
    if back_after is not None:
        print(f"site A back after a {args.outage_seconds:.0f} s outage ({args.outage} corrections waiting): first call "
              f"{back_after[0]:.2f} s later (goal <= 3 s), first PATCH {back_after[1]:.2f} s, converged "
              f"{back_after[2]:.2f} s; load {load()}")
    seconds = last_call - queued_at
    utilisation = sum(1 for c in run_calls if c.time >= queued_at) / (args.cap * seconds)
    return (f"budget: utilisation={utilisation:.2f} max_window={busiest(s.a, 0.0)} "
            f"cap_plus_burst={int(args.cap) + args.burst} calls_per_correction={len(run_calls) / len(names):.2f}")


def report_run(s: Setup, args: argparse.Namespace, calls: list[Any], names: list[str], started: float,
               queued_at: float, killed_at: float, last_call: float, victim: int, cpu: float) -> None:
    b_calls = [c for c in s.b.calls.log if c.time >= queued_at]
    a_counts, b_counts = windows(calls, queued_at, last_call), windows(b_calls, queued_at, last_call)
    for second, (on_a, on_b) in enumerate(zip(a_counts, b_counts)):
        kill = "  <- kill -9 of worker %d" % victim if int(killed_at - queued_at) == second else ""
        print(f"  t=+{second:3d}s  a={on_a:3d}  b={on_b:3d}{kill}")
    gets = Counter(c.path for c in calls if c.method == "GET" and not c.query)
    patches = Counter(c.path for c in calls if c.method == "PATCH")
    print(f"A: {len(calls)} calls for {len(names)} corrections ({sum(gets.values())} GETs, {sum(patches.values())} "
          f"PATCHes, {len(calls) - sum(gets.values()) - sum(patches.values())} list pages); users read more than once: "
          f"{sum(1 for n in gets.values() if n > 1)}; duplicate PATCHes: {sum(n - 1 for n in patches.values())}")
    print(reread_summary(calls, killed_at))
    print(f"busiest 1 s window since the workers started: a={busiest(s.a, started)} b={busiest(s.b, started)} "
          f"(cap + burst {int(args.cap) + args.burst})")
    print(f"work queued {last_call - queued_at:.1f} s (ideal {len(calls) / args.cap:.1f} s at the cap); "
          f"workers' CPU {cpu:.1f} s = {cpu / max(1, len(calls)) * 1000:.1f} ms per call on A; load {load()}")


def reread_summary(calls: list[Any], killed_at: float) -> str:
    """Why users were read again: after their PATCH (a correction made, read anew), or
    before it (under way when a worker died, or raised again meanwhile); and the reconcile
    passes (list pages) that ran, relative to the kill."""
    by_user: dict[str, list[Any]] = {}
    for call in calls:
        if not call.query:
            by_user.setdefault(call.path, []).append(call)
    after_patch = before_patch = 0
    for user_calls in by_user.values():
        gets = [c for c in user_calls if c.method == "GET"]
        patch = next((c.time for c in user_calls if c.method == "PATCH"), None)
        if len(gets) > 1:
            if patch is not None and gets[-1].time > patch:
                after_patch += 1
            else:
                before_patch += 1
    passes = sorted({round(c.time - killed_at) for c in calls if c.query})
    return (f"users read again after their PATCH: {after_patch}, read twice before it: {before_patch}; "
            f"list pages at {passes} s from the kill (a reconcile pass: the new faust leader's first)")


async def outage(s: Setup, args: argparse.Namespace, pairs: dict[str, tuple[Any, Any]]) -> tuple[float, float, float]:
    """Seconds from A answering again to its first call, its first PATCH and the link
    converged, the work queued meanwhile."""
    names = list(pairs)
    changed = names[:args.outage]
    for name in changed:
        s.b.set_username(pairs[name][1], f"{name}_c")
    mark = s.a.calls.log[-1].seq
    alive = next(w for w in s.workers if w.proc.poll() is None)
    await reconcile(alive)  # A's listing is in; its corrections are being raised
    await s.a.stop(cleanup_broker=False)  # connections refused: every correction of the wave waits
    if any(c.method == "PATCH" for c in s.a.calls.since(mark)):
        print("(a PATCH of the second wave came before A was down)", file=sys.stderr)
    await asyncio.sleep(args.outage_seconds)  # the outage itself
    back = time.time()
    await s.a.start()
    await until(lambda: any(c.time >= back for c in s.a.calls.log), 60, "a call on A", interval=0.02)
    first = min(c.time for c in s.a.calls.log if c.time >= back)
    want = {name: f"{name}_c" if name in changed else f"{name}_b" for name in names}
    await until(lambda: usernames(s.a, s.offering_a) == want, 120, "A to converge after the outage", interval=0.05)
    converged = time.time()
    patch = min(c.time for c in s.a.calls.log if c.time >= back and c.method == "PATCH")
    return first - back, patch - back, converged - back


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the defaults: <= 90 s")
    parser.add_argument("--kill", choices=("heavy", "light"), default="heavy")
    for name, kind in (("users", int), ("cap", float), ("burst", int), ("workers", int), ("partitions", int),
                       ("heavy", float), ("outage", int), ("outage-seconds", float)):
        parser.add_argument(f"--{name}", type=kind, default=QUICK[name.replace("-", "_")])
    print(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()

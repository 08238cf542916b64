"""usync vs the existing agent (waldur-site-agent 1.0.7 + waldur-site-agent-waldur), same scenario.

    .local/venv/bin/python bench/bench_side_by_side.py        # N = 1k, 10k, 100k; 200, 200 and 20 changes
    .local/venv/bin/python bench/bench_side_by_side.py --quick          # N = 1,000; 50 changes
    .local/venv/bin/python bench/bench_side_by_side.py --users 10000 --changes 200 --rate 200 --systems usync
    .local/venv/bin/python bench/bench_side_by_side.py --plot docs/img/side-by-side   # PNGs: <prefix>-latency.png ...

At 100k users the agent's full sync per event takes tens of seconds, so that point makes
20 changes, not 200 (``--changes`` takes one count per ``--users`` entry).

For usync each run also breaks every change's time down per stage (bench/latency_stages.py:
the records' own timestamps, the run's topics switched to LogAppendTime).

Scenario, per N and per system, on a fresh pair of simulated sites (waldursim, real RabbitMQ):
one offering on A and on B with N users each, A already equal to B; then ``--changes``
usernames are changed on B at ``--rate`` per second (each emits ``update`` + ``username_set``,
as Waldur does for Slurm offerings). Measured until every A user equals B again:

- time to converge per change: from the change on B to the PATCH on A that makes A equal
  (store hooks in the simulator, exact), p50 and p99;
- Waldur API calls on A and B (the simulator's call log) and PATCHes sent.

usync: the real ``usync bridge`` + ``usync worker`` (subprocesses, generated config, own topics).
The agent: bench/agent_driver.py in ``.local/agent-venv`` (created from
bench/agent-requirements.txt on first run): the plugin's own STOMP event path, one full
sync per B create/update event with a non-empty username (with the one-line arity shim
1.0.7 needs, see the driver). After A converges the agent still works through the events
queued meanwhile (each one a full sync); that cost is counted until its queue is drained
or ``--agent-drain`` seconds pass (then projected from the measured cost per sync).

The machine is a shared 2-core box: figures are noisy; everything (sites, broker, Kafka,
the systems under test) shares those cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from demo.stack import (  # noqa: E402
    Child,
    Tracker,
    UsyncStack,
    api_calls,
    patch_calls,
    percentile,
    populate,
    settle,
)
from bench.agent_venv import AGENT_DRIVER, AGENT_PY, ensure_agent_venv  # noqa: E402
from bench.latency_stages import AFTER, STAGES, StageClock, log_append_time, per_change, read_topic, summary  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ  # noqa: E402
from waldursim import Federation  # noqa: E402

console = Console(stderr=True)


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    users: int
    changes: int
    rate: float
    converged: bool
    seconds: float  # first change -> every A user equal to B
    p50: float
    p99: float
    calls: int  # A + B API calls until converged
    patches: int
    calls_total: int  # including the work after convergence (agent: queued syncs), measured or projected
    projected: bool = False
    note: str = ""
    stages: dict[str, tuple[float, float]] | None = None  # usync: stage -> (p50, p99) seconds


async def _changes(b: Any, pairs: list[Any], count: int, rate: float, clock: StageClock) -> float:
    """Change ``count`` B usernames at ``rate``/s (a load shape; the pacing is the point)."""
    users = pairs[0].users
    step = max(1, len(users) // count)
    chosen = [users[i * step % len(users)] for i in range(count)]
    t0 = time.monotonic()
    for i, (a_ou, b_ou) in enumerate(chosen):
        name = f"{b.store.users[b_ou.user].username}-v2"
        clock.change(b_ou.uuid, a_ou.uuid, name)
        b.set_username(b_ou, name)
        delay = t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return t0


async def run_one(system: str, users: int, changes: int, rate: float, deadline: float, agent_drain: float,
                  tmp: Path) -> Result:
    federation = Federation(RABBITMQ.broker_admin(), seed=7, publish_rate=500.0)
    b, a = federation.add_site("b"), federation.add_site("a")
    pairs = populate(a, b, users=users, offerings=["hpc"], a_converged=True)
    tracker = Tracker(a, b, pairs)
    clock = StageClock()
    clock.hook(a)
    stack: UsyncStack | None = None
    agent: Child | None = None
    note = ""
    try:
        await federation.start()
        if system == "usync":
            stack = UsyncStack(a, b, pairs, tmp, label="bench", requests_per_second=2000, concurrency=64,
                               broker_url=RABBITMQ.web_stomp_url, kafka_bootstrap=KAFKA_BOOTSTRAP)
            stack.start_bridge()
            await stack.bridge_ready()
            stack.start_worker()
            await stack.worker_ready()
            # start-up reconcile (lists both sites; nothing to PATCH) must be over before we measure
            await _await_row_count(stack, users, timeout=120 + users / 250)  # 100k users: 520 s on a loaded box
            await settle(stack, a, b, quiet=1.5)
            await log_append_time(KAFKA_BOOTSTRAP, _stage_topics(stack))
        else:
            agent = await _start_agent(a, b, pairs[0], tmp)
        base_calls, base_patches = api_calls(a) + api_calls(b), patch_calls(a)
        tracker.reset_latencies()
        with console.status(f"{system}: N={users:,}, {changes} changes on B at {rate:.0f}/s …"):
            t0 = await _changes(b, pairs, changes, rate, clock)
            ok = await tracker.wait_converged(max(1.0, deadline - (time.monotonic() - t0)))
        seconds = (tracker.converged_at - t0) if ok else time.monotonic() - t0
        calls = api_calls(a) + api_calls(b) - base_calls
        patches = patch_calls(a) - base_patches
        calls_total, projected, stages = calls, False, None
        if stack is not None:
            await settle(stack, a, b, quiet=1.5)
            calls_total = api_calls(a) + api_calls(b) - base_calls
            try:
                stages = await _stages(stack, clock)
            except Exception as exc:  # noqa: BLE001 - the breakdown is extra: the run's figures stand
                note = f"no stage breakdown: {exc}"
        elif agent is not None:
            calls_total, projected, note = await _agent_drain(agent, a, b, base_calls, changes, agent_drain)
        lat = tracker.latencies
        if not ok:
            note = (note + "; " if note else "") + f"{len(tracker.mismatched)} users not converged by the deadline"
        return Result(system, users, changes, rate, ok, seconds, percentile(lat, 50), percentile(lat, 99),
                      calls, patches, calls_total, projected, note, stages)
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
            await stack.delete_topics()
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        await federation.stop()


def _stage_topics(stack: UsyncStack) -> list[str]:
    """The events topic, the worker's ``<app>-by-link`` and ``<app>-corrections``, the outcomes topic."""
    return [stack.topics[0], f"usync-{stack.suffix}-by-link", f"usync-{stack.suffix}-corrections", stack.topics[2]]


async def _stages(stack: UsyncStack, clock: StageClock) -> dict[str, tuple[float, float]]:
    events, routed, corrections, outcomes = [await read_topic(KAFKA_BOOTSTRAP, t) for t in _stage_topics(stack)]
    rows = per_change(clock, events, routed, corrections, outcomes)
    console.print(f"  stages: {len(rows)} of {len(clock.changed)} changes traced through {len(events):,} events, "
                  f"{len(corrections):,} correction requests, {len(outcomes):,} outcomes")
    return summary(rows)


async def _await_row_count(stack: UsyncStack, users: int, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            stack.check_alive()
            try:
                r = await client.get(f"http://127.0.0.1:{stack.worker_port}/usync/table/")
            except httpx.HTTPError:  # the worker's web view is not up yet (or restarting with a rebalance)
                await asyncio.sleep(max(0.5, users / 20_000))
                continue
            rows = r.json().get("rows", {}) if r.status_code == 200 else {}
            if sum(1 for row in rows.values() if row.get("a_offering_user_uuid") and row.get("b_offering_user_uuid")) >= users:
                return
            # polling the worker's table view (no push signal for "snapshot folded"); at 100k
            # rows each answer is tens of MB, so large tables are asked for less often
            await asyncio.sleep(max(0.5, users / 20_000))
    raise RuntimeError("usync did not load the start-up snapshot in time")


# -- the agent ---------------------------------------------------------------------------------


async def _start_agent(a: Any, b: Any, pair: Any, tmp: Path) -> Child:
    cfg = {
        "a_url": a.url, "a_token": a.staff_token, "a_offering": pair.a.uuid,
        "b_url": b.url, "b_token": b.staff_token, "b_offering": pair.b.uuid,
        "b_customer": b.store.offerings[pair.b.uuid].customer,
        "ws_host": RABBITMQ.host, "ws_port": RABBITMQ.web_stomp_port, "ws_path": "/ws",
    }
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    # The driver's stdout and stderr go to one log: READY, one JSON line per handled event, the agent's log.
    child = Child("agent", [str(AGENT_PY), str(AGENT_DRIVER), str(path)],
                  {**os.environ, "PYTHONUNBUFFERED": "1"}, tmp / "agent.log")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"the agent exited with {child.proc.returncode}:\n{child.tail()}")
        if "READY" in child.tail(100_000):
            return child
        await asyncio.sleep(0.2)  # polling the driver's log for READY
    raise RuntimeError(f"the agent did not subscribe within 90 s:\n{child.tail()}")


def _agent_events(child: Child) -> list[dict]:
    events = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"event"'):
            events.append(json.loads(line))
    return events


async def _agent_drain(child: Child, a: Any, b: Any, base_calls: int, changes: int,
                       drain: float) -> tuple[int, bool, str]:
    """The agent keeps running one full sync per queued update event; count them until done or ``drain`` s."""
    expected = changes  # one update per change triggers a sync (username_set is skipped)
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline:
        handled = [e for e in _agent_events(child) if e.get("action") == "update"]
        if len(handled) >= expected:
            break
        await asyncio.sleep(0.5)  # polling the driver's event lines
    await b.publisher.drain()
    handled = [e for e in _agent_events(child) if e.get("action") == "update"]
    calls = api_calls(a) + api_calls(b) - base_calls
    if len(handled) >= expected:
        return calls, False, f"{len(handled)} event syncs, {sum(e['seconds'] for e in handled) / len(handled):.2f} s each"
    if not handled:
        return calls, True, "no event sync finished"
    per_sync = calls / len(handled)
    return int(per_sync * expected), True, (f"{len(handled)}/{expected} event syncs done in {drain:.0f} s, "
                                            f"{sum(e['seconds'] for e in handled) / len(handled):.2f} s each; rest projected")


# -- report -------------------------------------------------------------------------------------


def report(results: list[Result], rate: float) -> Table:
    table = Table(title="side by side: time from a change on B until A equals B, and the API cost")
    for column in ("system", "users", "changes", "converged after", "p50", "p99", "API calls (to converge)",
                   "API calls (all events)", "calls/change", "PATCHes", "note"):
        table.add_column(column, justify="left" if column in ("system", "note") else "right")
    for r in results:
        table.add_row(r.system, f"{r.users:,}", f"{r.changes} @ {r.rate:.0f}/s",
                      f"{r.seconds:.2f} s" + ("" if r.converged else " (NOT converged)"),
                      f"{r.p50 * 1000:.0f} ms", f"{r.p99 * 1000:.0f} ms", f"{r.calls:,}",
                      f"{r.calls_total:,}" + (" (projected)" if r.projected else ""),
                      f"{r.calls_total / r.changes:.1f}", f"{r.patches:,}", r.note)
    return table


def goals(results: list[Result]) -> list[str]:
    lines = []
    by = {(r.system, r.users): r for r in results}
    wanted = {10_000: 10.0, 100_000: 100.0}  # usync >= this many times faster than the agent
    for n in sorted({r.users for r in results}):
        u, g = by.get(("usync", n)), by.get(("agent", n))
        if u:
            lines.append(f"N={n:,}: usync p50 {u.p50 * 1000:.0f} ms, p99 {u.p99 * 1000:.0f} ms "
                         f"(goal p99 <= 100 ms at 10k users, 200 changes at 200/s, quiet box: "
                         f"{'met' if u.p99 <= 0.1 else 'NOT met'}); {u.calls_total / u.changes:.2f} calls per change")
        if u and g:
            goal = wanted.get(n)
            verdict = "" if goal is None else (f" (goal >= {goal:.0f}x: "
                                                f"{'met' if min(g.p50 / u.p50, g.p99 / u.p99) >= goal else 'NOT met'})")
            lines.append(f"N={n:,}: agent p50 {g.p50:.2f} s / p99 {g.p99:.2f} s vs usync p50 {u.p50:.3f} s / p99 {u.p99:.3f} s: "
                         f"usync {g.p50 / u.p50:.1f}x (p50), {g.p99 / u.p99:.1f}x (p99) faster{verdict}; "
                         f"API calls per change {g.calls_total / g.changes:.0f} vs {u.calls_total / u.changes:.1f}")
    usync = [by[k] for k in sorted(by) if k[0] == "usync"]
    if len(usync) > 1:
        spread = max(r.p99 for r in usync) / min(r.p99 for r in usync)
        lines.append(f"usync p99 across N: largest/smallest {spread:.2f}x (goal: flat in N)")
    return lines


def stage_table(results: list[Result]) -> Table:
    table = Table(title="usync: where a change's time goes (per change, p50 / p99 in ms; bench/latency_stages.py)")
    table.add_column("users", justify="right")
    for stage in (*STAGES, "total", *AFTER):
        table.add_column(stage, justify="right")
    for r in results:
        if r.stages:
            table.add_row(f"{r.users:,}", *(f"{r.stages[k][0] * 1000:.0f} / {r.stages[k][1] * 1000:.0f}"
                                            if k in r.stages else "-" for k in (*STAGES, "total", *AFTER)))
    return table


def plots(results: list[Result], prefix: str) -> list[str]:
    """PNGs: latency against N per system, API calls per change against N, usync's stages."""
    from bench.plots import lines as line_plot, stacked

    day = time.strftime("%Y-%m-%d")
    ns = sorted({r.users for r in results})
    by = {(r.system, r.users): r for r in results}
    systems = sorted({r.system for r in results}, reverse=True)
    latency = {f"{s} {q}": [getattr(by[(s, n)], q) * 1000 if (s, n) in by else None for n in ns]
               for s in systems for q in ("p50", "p99")}
    calls = {s: [by[(s, n)].calls_total / by[(s, n)].changes if (s, n) in by else None for n in ns] for s in systems}
    made = [f"{prefix}-latency.png", f"{prefix}-calls.png"]
    line_plot(Path(made[0]), ns, latency, title=f"change on B → A equal, per change ({day})",
              xlabel="users per offering", ylabel="ms")
    line_plot(Path(made[1]), ns, calls, title=f"Waldur API calls per change ({day})",
              xlabel="users per offering", ylabel="calls per change")
    staged = [r for r in results if r.stages]
    if staged:
        made.append(f"{prefix}-stages.png")
        stacked(Path(made[2]), [f"N={r.users:,} p50" for r in staged],
                {k: [r.stages[k][0] * 1000 if k in r.stages else 0.0 for r in staged] for k in STAGES},
                title=f"usync: p50 per stage ({day})", ylabel="ms")
    return made


def load_results(paths: list[str]) -> list[Result]:
    """Results saved by ``--json`` (one or more runs), stages back as tuples."""
    results = []
    for path in paths:
        for item in json.loads(Path(path).read_text()):
            if item.get("stages"):
                item["stages"] = {k: tuple(v) for k, v in item["stages"].items()}
            results.append(Result(**item))
    return results


def medians(results: list[Result]) -> list[Result]:
    """One result per (system, users): the run with the median p50 (the plots' points)."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.system, r.users), []).append(r)
    return [sorted(g, key=lambda r: r.p50)[len(g) // 2] for _, g in sorted(groups.items())]


def print_report(results: list[Result], rate: float) -> None:
    out = Console(width=200)
    out.print(report(results, rate))
    if any(r.stages for r in results):
        out.print(stage_table(results))
    for line in goals(medians(results)):
        out.print(line)


async def main_async(args: argparse.Namespace) -> int:
    if args.from_json:
        results = load_results(args.from_json)
        print_report(results, args.rate)
        for path in plots(medians(results), args.plot) if args.plot else ():
            print(f"plot: {path}")
        return 0
    systems = args.systems.split(",")
    if "agent" in systems:
        ensure_agent_venv()
    users_list = [int(x) for x in args.users.split(",")]
    counts = [int(x) for x in str(args.changes).split(",")]
    counts += [counts[-1]] * (len(users_list) - len(counts))
    results: list[Result] = []
    for users, changes in zip(users_list, counts):
        for system in systems:
            with tempfile.TemporaryDirectory(prefix=f"usync-bench-{system}-") as tmp:
                console.print(f"[bold]{system}[/bold]: N={users:,}, {changes} changes at {args.rate:.0f}/s")
                try:
                    r = await run_one(system, users, changes, args.rate, args.deadline, args.agent_drain, Path(tmp))
                except Exception as exc:
                    console.print(f"[red]{system} N={users}: {exc}[/red]")
                    kept = Path(tempfile.mkdtemp(prefix=f"usync-bench-logs-{system}-{users}-"))
                    shutil.copytree(tmp, kept, dirs_exist_ok=True)
                    console.print(f"  logs kept in {kept}")
                    continue
                results.append(r)
                if args.keep_logs or not r.converged:
                    kept = Path(tempfile.mkdtemp(prefix=f"usync-bench-logs-{system}-{users}-"))
                    shutil.copytree(tmp, kept, dirs_exist_ok=True)
                    console.print(f"  logs kept in {kept}")
                console.print(f"  converged={r.converged} in {r.seconds:.2f} s, p50 {r.p50 * 1000:.0f} ms, "
                              f"p99 {r.p99 * 1000:.0f} ms, {r.calls:,} calls ({r.calls_total:,} all), "
                              f"{r.patches} PATCHes {r.note}")
    print_report(results, args.rate)
    out = Console(width=200)
    out.print(f"[dim]Shared 2-core machine: the sites, RabbitMQ, Kafka and the system under test share it; "
              f"figures are noisy. Load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}[/dim]")
    if args.plot:
        for path in plots(results, args.plot):
            out.print(f"plot: {path}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if results and all(r.converged for r in results) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="1000,10000,100000", help="users per offering, comma-separated")
    p.add_argument("--changes", default="200,200,20",
                   help="changes per --users entry, comma-separated (the last repeats)")
    p.add_argument("--rate", type=float, default=200.0, help="changes on B per second")
    p.add_argument("--systems", default="usync,agent")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for A to converge")
    p.add_argument("--agent-drain", type=float, default=120.0,
                   help="seconds to let the agent work through queued events after converging")
    p.add_argument("--quick", action="store_true", help="N = 1,000, 50 changes")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--plot", default=None, help="write PNGs <prefix>-latency.png, -calls.png, -stages.png")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                   help="no run: the tables and plots of saved runs (--json), the median run per point")
    args = p.parse_args()
    if args.quick:
        args.users, args.changes = "1000", "50"
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: two simulated Waldur sites, the real usync bridge and worker, A converging live.

    python -m demo [--users 1000] [--offerings 3] [--changes 200] [--edits 50] [--drift 50]

Phases, each awaited until every A offering user equals its B counterpart (or the deadline):

1. initial sync   A's offering users were auto-created empty; the worker's start-up
                  reconcile lists both sites and PATCHes A.
2. changes on B   usernames changed on B (events) -> relayed -> folded -> PATCH on A.
3. edits on A     someone edits usernames on A (events): usync puts B's back.
4. silent drift   usernames changed on A with no event; a reconcile pass repairs them.
"""

from __future__ import annotations

import argparse
import json
import asyncio
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from demo.stack import (
    StackError,
    Tracker,
    UsyncStack,
    api_calls,
    patch_calls,
    percentile,
    populate,
    settle,
)
from waldursim import BrokerAdmin, Federation

OFFERING_NAMES = ["hpc", "storage", "cloud", "gpu", "archive", "viz"]


class DemoFailed(RuntimeError):
    """A did not converge (or a usync process died): the message says what and where the logs are."""


@dataclass
class Options:
    users: int = 1000
    offerings: int = 3
    changes: int = 200
    change_rate: float = 100.0  # B changes per second
    edits: int = 50  # usernames edited on A (with events)
    drift: int = 50  # usernames changed on A silently
    deadline: float = 120.0  # seconds per phase
    seed: int = 1
    publish_rate: float = 500.0  # events/s per simulated site (Waldur's publisher limit)
    requests_per_second: float = 500.0  # usync's API budget per site
    keep_topics: bool = False


@dataclass
class PhaseResult:
    name: str
    changes: int
    seconds: float  # from the first change to the moment every pair was equal
    p50: float
    p99: float
    patches: int  # PATCHes on A
    calls: int  # Waldur API calls, A + B
    relayed: int  # events the bridge relayed into Kafka
    corrected: int  # corrections the worker recorded
    endpoints: dict[str, int] | None = None  # "site METHOD /route/" -> calls during the phase


@dataclass
class Live_:
    phase: str = "starting"
    started: float = 0.0
    figures: dict[str, float] | None = None


def _render(live: Live_, tracker: Tracker | None, stack: UsyncStack | None, a: Any, b: Any,
            results: list[PhaseResult]) -> Any:
    figures = live.figures or {}
    status = Table.grid(padding=(0, 2))
    status.add_column(style="bold cyan", justify="right")
    status.add_column()
    status.add_row("phase", f"[bold]{live.phase}[/bold]")
    status.add_row("elapsed", f"{time.monotonic() - live.started:6.1f} s" if live.started else "")
    if tracker is not None:
        status.add_row("users converged", f"{tracker.converged:,} / {tracker.total:,}")
        status.add_row("", ProgressBar(total=tracker.total, completed=tracker.converged, width=40))
    status.add_row("events relayed", f"{int(figures.get('relayed', 0)):,}  (bridge → Kafka)")
    status.add_row("events folded", f"{int(figures.get('folded', 0)):,}  (worker)")
    status.add_row("corrections", f"{int(figures.get('corrected', 0)):,}  (PATCHes on A: {patch_calls(a):,})")
    status.add_row("Waldur API calls", f"A {api_calls(a):,}   B {api_calls(b):,}")
    parts: list[Any] = [Panel(status, title="usync demo: Waldur A follows Waldur B", expand=False)]
    if results:
        parts.append(summary_table(results))
    return Group(*parts)


def endpoint_counts(a: Any, b: Any) -> Counter[str]:
    return Counter({f"{site.name} {endpoint}": n for site in (a, b) for endpoint, n in site.calls.counts.items()})


def summary_table(results: list[PhaseResult]) -> Table:
    table = Table(title="per phase: users changed, time until A equals B (all; per user p50/p99), cost")
    for column in ("phase", "changed", "converged", "p50", "p99", "PATCHes", "API calls", "calls/chg", "events"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for r in results:
        table.add_row(r.name, f"{r.changes:,}", f"{r.seconds:.2f} s", f"{r.p50 * 1000:.0f} ms", f"{r.p99 * 1000:.0f} ms",
                      f"{r.patches:,}", f"{r.calls:,}", f"{r.calls / r.changes:.2f}" if r.changes else "-",
                      f"{r.relayed:,}")
    return table


async def run_demo(opts: Options, console: Console, *, live_display: bool | None = None) -> list[PhaseResult]:
    """The whole demo; returns one result per phase or raises DemoFailed. Cleans up after itself."""
    tmp = Path(tempfile.mkdtemp(prefix="usync-demo-"))
    rng = random.Random(opts.seed)
    federation = Federation(BrokerAdmin.local(), seed=opts.seed, publish_rate=opts.publish_rate)
    try:
        await federation.check_broker()
    except Exception as exc:
        raise DemoFailed(f"RabbitMQ's management API is not reachable ({exc}); run `make services`") from None
    b, a = federation.add_site("b"), federation.add_site("a")
    names = [OFFERING_NAMES[i % len(OFFERING_NAMES)] + ("" if i < len(OFFERING_NAMES) else str(i))
             for i in range(opts.offerings)]
    pairs = populate(a, b, users=opts.users, offerings=names, a_converged=False)
    tracker = Tracker(a, b, pairs)
    stack: UsyncStack | None = None
    state = Live_()
    results: list[PhaseResult] = []
    use_live = console.is_terminal if live_display is None else live_display
    ok = False
    try:
        await federation.start()
        stack = UsyncStack(a, b, pairs, tmp, label="demo", requests_per_second=opts.requests_per_second)
        console.print(f"[bold]usync demo[/bold]: site B {b.url} (holds usernames), site A {a.url} (follows); "
                      f"{len(pairs)} offerings, {tracker.total:,} offering users per site")
        console.print(f"config {stack.config_path}; topics {stack.topics[0]} …; logs in {tmp}")
        stack.start_bridge()
        await stack.bridge_ready()

        async with httpx.AsyncClient(timeout=5) as client:
            async def refresh() -> None:
                state.figures = await stack.figures(client)

            async def monitor(display: Live | None) -> None:
                last_line = 0.0
                while True:
                    stack.check_alive()
                    await refresh()
                    if display is not None:
                        display.update(_render(state, tracker, stack, a, b, results))
                    elif time.monotonic() - last_line >= 2.0:
                        last_line = time.monotonic()
                        f = state.figures or {}
                        console.print(f"  {state.phase}: {tracker.converged:,}/{tracker.total:,} converged, "
                                      f"{int(f.get('relayed', 0)):,} events relayed, "
                                      f"{int(f.get('corrected', 0)):,} corrections, {patch_calls(a):,} PATCHes on A")
                    await asyncio.sleep(0.25)  # display refresh period

            async def phase(name: str, changes: int, act: Callable[[], Awaitable[None]] | None) -> None:
                await refresh()
                before = (patch_calls(a), api_calls(a) + api_calls(b), dict(state.figures or {}), endpoint_counts(a, b))
                tracker.reset_latencies()
                state.phase, state.started = name, time.monotonic()
                started = state.started
                if not use_live:
                    console.print(f"[bold]{name}[/bold] …")
                if act is not None:
                    await act()
                if not await tracker.wait_converged(max(1.0, opts.deadline - (time.monotonic() - started))):
                    sample = sorted(tracker.mismatched)[:3]
                    who = ", ".join(a.store.users[a.store.offering_users[u].user].username for u in sample)
                    await _diagnose(stack, tracker, a, b, tmp / "diagnosis.json")
                    raise DemoFailed(
                        f"A did not converge within {opts.deadline:.0f} s in phase '{name}': "
                        f"{len(tracker.mismatched):,} of {tracker.total:,} offering users still differ from B "
                        f"(e.g. {who}). Logs: {tmp}")
                seconds = max(0.0, tracker.converged_at - started)
                await refresh()
                after = state.figures or {}
                lat = tracker.latencies
                results.append(PhaseResult(
                    name=name, changes=changes, seconds=seconds, p50=percentile(lat, 50), p99=percentile(lat, 99),
                    patches=patch_calls(a) - before[0], calls=api_calls(a) + api_calls(b) - before[1],
                    relayed=int(after.get("relayed", 0) - before[2].get("relayed", 0)),
                    corrected=int(after.get("corrected", 0) - before[2].get("corrected", 0)),
                    endpoints=dict(endpoint_counts(a, b) - before[3])))
                if not use_live:
                    r = results[-1]
                    console.print(f"  converged in {r.seconds:.2f} s (per user p50 {r.p50 * 1000:.0f} ms, "
                                  f"p99 {r.p99 * 1000:.0f} ms), {r.patches:,} PATCHes, {r.calls:,} API calls")

            all_pairs = [(pair, a_ou, b_ou) for pair in pairs for a_ou, b_ou in pair.users]

            async def start_worker() -> None:
                tracker.start_clocks(time.monotonic())
                stack.start_worker()

            async def change_b() -> None:
                chosen = rng.sample(all_pairs, min(opts.changes, len(all_pairs)))
                t0 = time.monotonic()
                for i, (_pair, _a_ou, b_ou) in enumerate(chosen):
                    b.set_username(b_ou, f"{b.store.users[b_ou.user].username}-v2")
                    # pace the changes at change_rate/s (a load shape, not synchronisation)
                    delay = t0 + (i + 1) / opts.change_rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)

            async def edit_a() -> None:
                for _pair, a_ou, _b_ou in rng.sample(all_pairs, min(opts.edits, len(all_pairs))):
                    a.set_username(a_ou, f"edited-{rng.getrandbits(24):06x}")

            async def drift_a() -> None:
                for _pair, a_ou, _b_ou in rng.sample(all_pairs, min(opts.drift, len(all_pairs))):
                    a.drift_username(a_ou, f"drift-{rng.getrandbits(24):06x}")
                await stack.reconcile()

            plan: list[tuple[str, int, Callable[[], Awaitable[None]] | None]] = [
                ("1 initial sync", tracker.total - tracker.converged, None),
                ("2 changes on B", min(opts.changes, len(all_pairs)), change_b),
                ("3 edits on A", min(opts.edits, len(all_pairs)), edit_a),
                ("4 silent drift on A", min(opts.drift, len(all_pairs)), drift_a),
            ]

            async def run_phases(display: Live | None) -> None:
                watcher = asyncio.create_task(monitor(display))
                try:
                    for i, (name, changes, act) in enumerate(plan):
                        if i:
                            state.phase = "settling (waiting for an idle pipeline)"
                            await settle(stack, a, b)
                        step = asyncio.create_task(phase(name, changes, act))
                        done, _ = await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
                        if watcher in done:  # a usync process died: say so
                            step.cancel()
                            watcher.result()
                        step.result()
                    state.phase = "done"
                    await refresh()
                    if display is not None:
                        display.update(_render(state, tracker, stack, a, b, results))
                finally:
                    watcher.cancel()

            # Phase 1 counts from the worker's start: its start-up reconcile does the initial sync.
            await start_worker()
            try:
                if use_live:
                    with Live(_render(state, tracker, stack, a, b, results), console=console,
                              refresh_per_second=4, transient=False) as display:
                        await run_phases(display)
                else:
                    await run_phases(None)
            except StackError as exc:
                raise DemoFailed(str(exc)) from None
        ok = True
        return results
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
            if ok and not opts.keep_topics:  # a failed run keeps its topics for `usync replay`
                await stack.delete_topics()
        await federation.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)


async def _diagnose(stack: UsyncStack, tracker: Tracker, a: Any, b: Any, path: Path) -> None:
    """On failure: what A, B and the worker's table say about the users that still differ."""
    report: dict[str, Any] = {}
    table: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://127.0.0.1:{stack.worker_port}/usync/table/")
            table = r.json().get("rows", {})
    except Exception as exc:  # diagnosis only
        report["table_error"] = repr(exc)
    for a_uuid in sorted(tracker.mismatched)[:20]:
        a_ou = a.store.offering_users[a_uuid]
        b_ou = b.store.offering_users[tracker.b_of_a[a_uuid]]
        user = a.store.users[a_ou.user].username
        report[user] = {"a": {"uuid": a_uuid, "username": a_ou.username, "state": str(a_ou.state)},
                        "b": {"uuid": b_ou.uuid, "username": b_ou.username, "state": str(b_ou.state)},
                        "table": {k: v for k, v in table.items() if k.endswith(":" + user)}}
    path.write_text(json.dumps(report, indent=2, default=str))


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    d = Options()
    p.add_argument("--users", type=int, default=d.users, help="identities (offering users per site)")
    p.add_argument("--offerings", type=int, default=d.offerings, help="offerings per site (one link each)")
    p.add_argument("--changes", type=int, default=d.changes, help="usernames changed on B")
    p.add_argument("--change-rate", type=float, default=d.change_rate, help="B changes per second")
    p.add_argument("--edits", type=int, default=d.edits, help="usernames edited on A (with events)")
    p.add_argument("--drift", type=int, default=d.drift, help="usernames changed silently on A")
    p.add_argument("--deadline", type=float, default=d.deadline, help="seconds each phase may take")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--keep-topics", action="store_true", help="leave this run's Kafka topics in place")
    a = p.parse_args(argv)
    return Options(users=a.users, offerings=a.offerings, changes=a.changes, change_rate=a.change_rate,
                   edits=a.edits, drift=a.drift, deadline=a.deadline, seed=a.seed, keep_topics=a.keep_topics)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the summary table
        console = Console(width=130)

    async def guarded() -> list[PhaseResult]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # SIGTERM: same clean-up as Ctrl-C
        return await run_demo(opts, console)

    started = time.monotonic()
    try:
        results = asyncio.run(guarded())
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted; every process the demo started has been stopped[/yellow]")
        return 130
    if not console.is_terminal:
        console.print(summary_table(results))
    total_patches = sum(r.patches for r in results)
    console.print(f"[bold green]A converged with B in every phase[/bold green] "
                  f"({total_patches:,} PATCHes in all, {time.monotonic() - started:.1f} s). "
                  "Nothing is left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

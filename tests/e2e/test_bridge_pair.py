"""Two bridges on one configuration: competing consumers on every RabbitMQ queue.

Bridge and two workers as in the fault tests, plus a second ``usync bridge`` on the same
configuration, both subscribed to every queue of both sites; ``CHANGES`` username changes
on B over ~40 s. Both bridges are shown to take messages from the queues; then one of
them (chosen by the seed) is killed with SIGKILL mid-stream and not restarted: the
survivor gets the dead one's unacked messages redelivered and carries the rest.

Afterwards: the e2e checks (A equals B, every confirmed event in the topic, every
correction answered, nobody else exited), and duplicates in the events topic no more than
the survivor counted as redelivered (``usync_bridge_redelivered_total``). Why two
consumers on one queue keep the table right, and the one case they do not:
docs/invariants.md, 3 ("Two bridges on one queue").
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import httpx
import pytest

from tests.app.harness import until
from tests.e2e.harness import Pipeline, Process, describe, dump_logs, final_checks, relay_figures

pytestmark = [pytest.mark.services]
log = logging.getLogger("tests.e2e")

# 5,000 changes (10,000 of B's events), as the cluster tests: at 10,000 the simulator's
# publisher, not the bridges, sets the pace on the shared box (tests/cluster/test_cluster_faults.py).
CHANGES = int(os.environ.get("USYNC_CLUSTER_CHANGES") or 5000)


async def counter(process: Process, name: str) -> float:
    """The sum over labels of one counter on a bridge's /metrics."""
    base = process.health.rsplit("/health", 1)[0]
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(base + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def test_a_pair_of_bridges_survives_either_one_killed(pipeline: Pipeline):
    p = pipeline
    started = time.monotonic()
    await p.start()
    second = p.start_bridge(1)
    await second.ready()
    bridges = [*p.running("bridge-"), second]
    seed = int(os.environ.get("USYNC_E2E_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    victim = rng.choice(bridges)
    [survivor] = [b for b in bridges if b is not victim]
    notes = [f"seed {seed}", f"pipeline and second bridge up at {time.monotonic() - started:.1f}s"]
    marks: dict[str, float] = {}

    async def both_take_messages() -> bool:
        return all([await counter(b, "usync_bridge_received_total") > 0 for b in bridges])

    async def kill() -> None:
        await until(both_take_messages, 60, "both bridges to receive messages (competing consumers)", interval=0.5)
        await asyncio.sleep(rng.uniform(3.0, 15.0))  # a random moment of the stream: the scenario
        notes.append(f"{victim.name} received {await counter(victim, 'usync_bridge_received_total'):.0f}, "
                     f"{survivor.name} {await counter(survivor, 'usync_bridge_received_total'):.0f} before the kill")
        victim.kill9()
        marks["killed"] = time.monotonic()
        notes.append(f"{time.monotonic() - started:.1f}s kill -9 {victim.name}")

    try:
        await asyncio.gather(p.make_changes(CHANGES), kill())
        marks["changes_done"] = time.monotonic()
        figures = await final_checks(p)
        converged = time.monotonic()
        relayed = await relay_figures(p)
        redelivered = await counter(survivor, "usync_bridge_redelivered_total")
    except BaseException:
        dump_logs(p)
        raise
    assert relayed["lost"] == 0, relayed
    assert relayed["duplicates"] <= redelivered, (relayed, redelivered)
    figures.update(relayed, survivor_redelivered=redelivered, notes=notes,
                   converged_after_kill_s=round(converged - marks["killed"], 1),
                   converged_after_changes_s=round(converged - marks["changes_done"], 1),
                   seconds=round(time.monotonic() - started, 1))
    print(f"\n[bridge pair] {describe(figures)}")

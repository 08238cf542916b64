"""The whole pipeline under each fault, with 10,000 username changes in flight.

Bridge and two workers run as subprocesses; site B's simulator makes 10,000 username
changes (20,000 events) over ~40 s across 4 offerings (links) of 25 users each; while
they flow, one fault:

  rabbitmq   RabbitMQ stopped for 30 s, then started again
  kafka      Kafka stopped for 30 s, then started again
  waldur-a   Waldur A's API port closed for 30 s, then reopened
  kill-9     the bridge and one worker killed with SIGKILL at random moments, restarted

Afterwards: A equals B for every user, every event the simulator's publishers had
confirmed is in the events topic, every correction request has an outcome, and no
process exited on its own. These tests stop brokers: run them against brokers of your
own (tests/support/services.py says how), never against ones others are using.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import pytest

from tests.e2e.harness import PUBLISH_SECONDS, Pipeline, describe, dump_logs, final_checks

pytestmark = [pytest.mark.services, pytest.mark.disruptive]
log = logging.getLogger("tests.e2e")

FAULT_AT = 5.0  # seconds into the changes: the fault hits a busy pipeline
OUTAGE = 30.0  # the scenario's outage length, not synchronisation


async def outage(stop, start) -> None:
    await asyncio.to_thread(stop)  # blocking scripts: keep the simulator's loop serving
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(start)


async def close_api(site) -> None:
    """Waldur unreachable: the site's listening socket and every open connection closed."""
    runner, site._runner = site._runner, None
    await runner.cleanup()


async def reopen_api(site) -> None:
    old_mgmt = site._mgmt
    await site.start()  # binds the same port again; the publisher keeps running
    if old_mgmt is not None and old_mgmt is not site._mgmt:
        await old_mgmt.aclose()


async def kill_storm(p: Pipeline, rng: random.Random) -> list[str]:
    """Two bridge kills and two worker kills at random moments of the change window, each
    process restarted after a random pause; returns what happened, for the report."""
    events: list[str] = []
    t0 = time.monotonic()

    async def at(moment: float) -> None:
        await asyncio.sleep(max(0.0, t0 + moment - time.monotonic()))

    async def bridge_kills() -> None:
        for moment in sorted(rng.uniform(1, PUBLISH_SECONDS - FAULT_AT - 5) for _ in range(2)):
            await at(moment)
            [bridge] = p.running("bridge")
            bridge.kill9()
            events.append(f"{time.monotonic() - t0:.1f}s kill -9 {bridge.name}")
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            await p.start_bridge().ready()
            events.append(f"{time.monotonic() - t0:.1f}s bridge ready")

    async def worker_kills() -> None:
        for moment in sorted(rng.uniform(1, PUBLISH_SECONDS - FAULT_AT - 5) for _ in range(2)):
            await at(moment)
            slot = rng.randrange(2)
            [worker] = p.running(f"worker{slot}")
            worker.kill9()
            events.append(f"{time.monotonic() - t0:.1f}s kill -9 {worker.name}")
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            await p.start_worker(slot).ready()
            events.append(f"{time.monotonic() - t0:.1f}s worker{slot} ready")

    await asyncio.gather(bridge_kills(), worker_kills())
    return events


@pytest.mark.parametrize("fault", ["rabbitmq", "kafka", "waldur-a", "kill-9"])
async def test_pipeline_survives_fault_with_10k_changes_in_flight(pipeline, brokers, fault):
    p = pipeline
    started = time.monotonic()
    await p.start()
    log.info("pipeline up in %.1f s", time.monotonic() - started)
    seed = int(os.environ.get("USYNC_E2E_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    notes: list[str] = [f"seed {seed}"]

    async def inject() -> None:
        await asyncio.sleep(FAULT_AT)
        if fault == "rabbitmq":
            await outage(brokers["rabbitmq"].stop, brokers["rabbitmq"].start)
        elif fault == "kafka":
            await outage(brokers["kafka"].stop, brokers["kafka"].start)
        elif fault == "waldur-a":
            await close_api(p.a)
            await asyncio.sleep(OUTAGE)
            await reopen_api(p.a)
        else:
            notes.extend(await kill_storm(p, rng))
        notes.append(f"fault over at {time.monotonic() - started:.1f}s")

    async def change() -> None:
        await p.make_changes()
        notes.append(f"changes done at {time.monotonic() - started:.1f}s")

    try:
        notes.append(f"pipeline up at {time.monotonic() - started:.1f}s")
        await asyncio.gather(change(), inject())
        figures = await final_checks(p)
    except BaseException:
        dump_logs(p)
        raise
    figures["notes"] = notes
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(f"\n[{fault}] {describe(figures)}")

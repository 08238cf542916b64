"""Waldur-side faults the operator must see (issue 19): a source site down, a restarted
worker's readiness. Real Kafka, real RabbitMQ, the bridge and the simulator over HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.app.harness import LinkSpec, bridge_and_worker, patches, until, usernames

DOWN_FOR = 30.0  # seconds B answers 503


async def _health(worker) -> dict | None:
    r = await worker.get("/health")
    return r.json() if r is not None and r.status_code == 200 else None


@pytest.mark.parametrize("outage", ["503", "refused"])
async def test_a_source_site_down_is_warned_once_shown_degraded_and_recovers(setup, bridge, outage):
    s = setup
    pairs = {f"d{i}": s.add_user(f"d{i}") for i in range(5)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    _, worker = await bridge_and_worker(s, bridge, path)
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 60, "A to converge before the outage")
    assert (await _health(worker))["sites"]["b"]["up"] is True

    if outage == "503":
        s.b.faults.update(error_rate=1.0, error_statuses=[503])
        reason = "HTTP 503"
    else:
        await s.b.stop(cleanup_broker=False)  # B's port closed: connections are refused
        reason = "refused: "
    down_at = time.monotonic()
    for a_ou, _ in pairs.values():  # edits on A in flight: B wins, but only after a fresh read of B
        s.a.set_username(a_ou, "edited")
    await until(lambda: "site b is failing" in worker.log_text(), 5, "a WARNING naming site b")

    async def degraded() -> bool:
        health = await _health(worker)
        return health is not None and health["status"] == "degraded" and health["sites"]["b"]["up"] is False \
            and health["sites"]["b"]["reason"].startswith(reason)
    await until(degraded, 5, "/health degraded for b")
    metrics = (await worker.get("/metrics")).text
    assert 'usync_site_up{site="b"} 0.0' in metrics
    label = "503" if outage == "503" else "refused"
    assert f'usync_http_calls_total{{method="GET",site="b",status="{label}"}}' in metrics
    a_patches = len(patches(s.a))

    await until(lambda: time.monotonic() - down_at >= DOWN_FOR, DOWN_FOR + 1, "the outage to last", interval=0.5)
    assert len(patches(s.a)) == a_patches  # no PATCH without a fresh read of B
    if outage == "503":
        s.b.faults.reset()
    else:
        await s.b.start()
    await until(lambda: usernames(s.a, s.offering_a) == want, 120, "A to be put back after the outage")
    await until(lambda: "site b answers again" in worker.log_text(), 30, "an INFO that b answers again")

    async def recovered() -> bool:
        health = await _health(worker)
        return health is not None and health["status"] == "ok" and health["sites"]["b"]["up"] is True
    await until(recovered, 10, "/health ok again")
    log = worker.log_text()
    assert log.count("site b is failing") == 1 and log.count("site b answers again") == 1  # per outage, not per call


async def test_a_restarted_worker_is_ready_only_once_it_folds_and_corrects(setup, bridge):
    s = setup
    a_ou, b_ou = s.add_user("rita")
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    _, first = await bridge_and_worker(s, bridge, path)
    s.b.set_username(b_ou, "rita_b")
    await until(lambda: usernames(s.a, s.offering_a) == {"rita": "rita_b"}, 60, "A to converge")
    await until(lambda: _ready_status(first, 200), 60, "the first worker to be ready")
    first.kill9()

    second = s.start_worker(path)

    async def live_not_ready() -> bool:  # the stand-in hands its port to the worker's server: a moment with neither
        if not await _ready_status(second, 503):
            return False
        live = await second.get("/health/live")
        return live is not None and live.status_code == 200
    await until(live_not_ready, 60, "the restarted worker live (/health/live 200) but not ready (/health/ready 503)")
    since = patches(s.a)[-1].seq if patches(s.a) else 0
    s.b.set_username(b_ou, "rita_after_restart")  # made while the worker is not ready
    last_503 = time.time()
    while True:
        r = await second.get("/health/ready")
        if r is not None and r.status_code == 200:
            break
        assert second.proc.poll() is None, second.log_text()[-3000:]
        if r is not None:
            assert r.status_code == 503 and r.json()["ready"] is False
            last_503 = time.time()
        assert time.time() - last_503 < 90, "the restarted worker never became ready"
        await asyncio.sleep(0.1)  # the poll's pace
    await until(lambda: usernames(s.a, s.offering_a) == {"rita": "rita_after_restart"}, 60,
                "A to take the change made during the restart")
    [patch] = [p for p in patches(s.a) if p.seq > since]
    assert patch.time > last_503  # corrected only after readiness said so


async def _ready_status(worker, status: int) -> bool:
    r = await worker.get("/health/ready")
    return r is not None and r.status_code == status

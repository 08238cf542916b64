"""The demo's core, small: real RabbitMQ, real Kafka, the simulator, the real `usync` CLI
as subprocesses. Keeps `make demo` working."""

from __future__ import annotations

import io

from rich.console import Console

from demo.run import Options, run_demo


async def test_demo_converges_in_every_phase(kafka_bootstrap, rabbitmq):
    out = io.StringIO()
    opts = Options(users=50, offerings=2, changes=20, change_rate=50, edits=5, drift=5, deadline=90)
    results = await run_demo(opts, Console(file=out, width=130), live_display=False)

    assert [r.name for r in results] == ["1 initial sync", "2 changes on B", "3 edits on A", "4 silent drift on A"]
    initial, changes, edits, drift = results
    assert initial.changes == 50 and initial.patches == 50  # every empty A user PATCHed exactly once
    assert changes.patches == 20 and edits.patches == 5 and drift.patches == 5
    assert changes.relayed >= 20  # B's events went through the bridge
    assert "converged" in out.getvalue()

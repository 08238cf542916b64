"""Two fresh workers started together must correct every user (no fault, little load).

Found by the fault suite, two ways this has failed:

- (seen on 804d85e..e4b52be) a worker that creates the internal ``<app_id>-corrections``
  topic itself (faust declares it at start) led the group's first assignments before
  its metadata had the topic: its log says "Ignoring missing topic: '<app_id>-corrections'",
  no member was assigned a corrections partition, no rebalance followed, and the sink
  never ran. The fault suite works around it (tests/e2e/harness.py pre-creates the
  topic); this test does not.
- (seen on 9eb14e3) correction requests committed by the worker group with no outcome
  written (docs/invariants.md, 1), around the rebalances of two workers joining: the users of one
  corrections partition stay uncorrected until the next reconcile. Batches cut short by
  a rebalance are now held back from the commit (streams.app ``held_back_unless_done``).
  The workers' re-raise timer would hide such a loss (it asks again 30 s later), so
  convergence alone proves nothing: the test also checks that every committed request
  has its outcome and that no row had to be raised again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
import pytest

from streams.contract.schema import outcome_decoder
from tests.app.harness import USYNC, until
from tests.e2e.harness import diagnose, dump_logs, group_lag, read_topic, unanswered_corrections

pytestmark = pytest.mark.services


async def test_two_fresh_workers_started_together_correct_a(pipeline):
    p = pipeline
    await p.start(precreate_corrections=False, settle=False)  # changes while the group forms
    for ou in p.b_users:
        p.b.set_username(ou, "fresh")
    try:
        await until(p.a_equals_b, 90, "A to equal B after one change per user", interval=0.5)
    except AssertionError:
        dump_logs(p)
        app = p.config.app_id
        ignored = [line for proc in p.processes for line in proc.tail(10**7).splitlines() if "Ignoring missing topic" in line]
        unanswered = []
        if await group_lag(f"{app}-sink", f"{app}-corrections") == 0:  # everything committed: every request must be answered
            outcomes = [outcome_decoder.decode(v) for v in await read_topic(p.config.kafka.outcomes_topic)]
            unanswered = unanswered_corrections(await read_topic(f"{app}-corrections"), outcomes)
        raise AssertionError(f"A was not corrected; committed correction requests without an outcome: "
                             f"{len(unanswered)} {unanswered[:3]}; assignor said: {ignored[:2]}\n{await diagnose(p)}") from None

    app = p.config.app_id
    await until(lambda: _no_lag(f"{app}-sink", f"{app}-corrections"), 60, "the sink to commit every request", interval=0.5)
    requests = await read_topic(f"{app}-corrections")
    outcomes = [outcome_decoder.decode(v) for v in await read_topic(p.config.kafka.outcomes_topic)]
    assert requests and outcomes
    assert unanswered_corrections(requests, outcomes) == []
    raised = [line for proc in p.processes for line in proc.tail(10**7).splitlines() if "again: still in drift" in line]
    assert raised == [], f"rows had to be raised again, so a request was lost: {raised[:3]}"


async def _no_lag(group: str, topic: str) -> bool:
    return await group_lag(group, topic) == 0


async def test_two_fresh_workers_fold_every_fact(pipeline):
    """The fold is a faust agent too: the tables of two workers formed together must hold
    what a replay of the topics folds, key for key (a skipped by-link record would leave
    a row that no replay reproduces)."""
    p = pipeline
    await p.start(precreate_corrections=False, settle=False)  # changes while the group forms
    for ou in p.b_users:
        p.b.set_username(ou, "fresh")
    await until(p.a_equals_b, 90, "A to equal B after one change per user", interval=0.5)
    workers = [process for process in p.processes if process.name.startswith("worker")]
    out = p.tmp / "replay.json"
    differing: list[tuple[str, Any]] = []

    async def live_equals_replay() -> bool:
        proc = await asyncio.create_subprocess_exec(USYNC, "replay", "--config", str(p.config_path), "--json", str(out),
                                                    env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        replayed = json.loads(out.read_text())["rows"]
        async with httpx.AsyncClient(timeout=10) as client:
            tables = [(await client.get(w.health.replace("/health", "/usync/table/"))).json()["rows"] for w in workers]
        # each worker holds its active partitions (and standby copies): a key's value must be in one of them
        differing[:] = [(key, value) for key, value in replayed.items() if all(t.get(key) != value for t in tables)]
        orphans = {key for t in tables for key in t} - set(replayed)
        return bool(replayed) and not differing and not orphans
    await until(live_equals_replay, 90, "the live tables to equal a replay", interval=2)

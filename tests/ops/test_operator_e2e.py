"""Acceptance of the operator commands on real services: a site-agent YAML imported, checked,
and synced by a worker against the simulator; then `status`, `tail` (with --follow) and
`topics schema` read what that sync wrote to the real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.app.harness import ROOT, USYNC, WorkerProcess, patches, until
from tests.support.services import KAFKA_BOOTSTRAP

pytestmark = pytest.mark.services
SAMPLE = Path(__file__).parent / "data" / "site-agent.yaml"
LINK = "federated-hpc-access"


def _agent_yaml_for(s) -> str:
    """The sample with its example sites and offerings replaced by the simulated ones."""
    agent = yaml.safe_load(SAMPLE.read_text())
    hpc = agent["offerings"][0]
    hpc.update(waldur_api_url=s.a.url, waldur_api_token=s.a.staff_token, waldur_offering_uuid=s.offering_a.uuid,
               stomp_enabled=False)
    hpc["backend_settings"].update(target_api_url=s.b.url, target_api_token=s.b.staff_token,
                                   target_offering_uuid=s.offering_b.uuid)
    for offering in agent["offerings"][1:]:
        offering["waldur_api_url"] = s.a.url
        offering["backend_settings"]["target_api_url"] = s.b.url
    return yaml.safe_dump(agent)


def _usync(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([USYNC, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


async def _lines_of(proc: subprocess.Popen, path: Path, want: int, timeout: float) -> list[dict]:
    async def enough():
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if proc.poll() is not None and len(lines) < want:
            raise AssertionError(f"tail exited with {proc.returncode}")
        return lines if len(lines) >= want else None
    return await until(enough, timeout, f"{want} lines from usync tail --follow")


async def test_imported_site_agent_config_syncs_and_operator_commands_read_it(setup):
    s = setup
    a_ou, b_ou = s.add_user("alice")
    s.add_user("bob")  # a second user, already equal (both empty): no correction
    s.b.set_username(b_ou, "alice_b")

    # -- import, then check the config -------------------------------------------------------
    agent = s.tmp / "agent.yaml"
    agent.write_text(_agent_yaml_for(s))
    path = s.tmp / "usync.toml"
    imported = _usync("config", "import-site-agent", str(agent), "-o", str(path), "--app-id", f"usync-ops-{s.suffix}",
                      "--topic-prefix", f"t-{s.suffix}", "--bootstrap-servers", KAFKA_BOOTSTRAP, env=dict(os.environ))
    assert imported.returncode == 0, imported.stderr
    for token in (s.a.staff_token, s.b.staff_token):
        assert token not in path.read_text() and token not in imported.stderr
    data = tomllib.loads(path.read_text())
    by_url = {s.a.url: s.a.staff_token, s.b.url: s.b.staff_token}
    env = {**os.environ, **{site["token_env"]: by_url[site["api_url"]] for site in data["sites"].values()}}
    checked = _usync("config", "check", str(path), env=env)
    assert checked.returncode == 0 and "OK (2 sites, 2 links)" in checked.stdout, checked.stderr

    # -- follow the outcomes before anything happens --------------------------------------------
    follow_out = s.tmp / "tail-follow.jsonl"
    with open(follow_out, "wb") as out:
        follower = subprocess.Popen([USYNC, "tail", "--config", str(path), "--topic", "outcomes", "--follow",
                                     "--link", LINK], stdout=out, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        # -- the worker syncs A to B (start-up reconciliation: the link has reconcile = true) -------
        worker = WorkerProcess(path, env, s.tmp, 0, [])
        s.workers.append(worker)
        await worker.ready()
        await until(lambda: s.a.offering_user(a_ou).username == "alice_b", 90, "A's username to become B's")
        assert len(patches(s.a)) == 1
        followed = await _lines_of(follower, follow_out, 1, 60)
        assert followed[0]["link"] == LINK and followed[0]["user_username"] == "alice"
        assert followed[0]["action"] == "corrected" and followed[0]["desired"] == "alice_b"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(30)
    assert follower.returncode == 0, follower.stderr.read().decode()

    # -- status: users, drift, last reconcile, last outcome, lag --------------------------------
    seen: list = []

    async def settled():
        run = await asyncio.to_thread(_usync, "status", "--config", str(path), "--worker", worker.url, "--json", env=env)
        report = json.loads(run.stdout)
        seen[:] = [run.returncode, report]
        [link] = [x for x in report["links"] if x["link"] == LINK]
        ok = run.returncode == 0 and link["drift"] == 0 and link["lag"] == 0 and link["users"] == 2
        return (report, link) if ok and link["last_reconcile"] and link["last_outcome"] else None
    try:
        report, link = await until(settled, 90, "usync status to show the link converged")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {seen}") from None
    assert report["workers"] == {worker.url: "ok"} and report["group"] == f"usync-ops-{s.suffix}"
    table = _usync("status", "--config", str(path), "--worker", worker.url, env=env)
    assert table.returncode == 0 and LINK in table.stdout and "last reconcile" in table.stdout

    # -- tail (bounded): filters by link, user and time ------------------------------------------
    outcomes = _usync("tail", "--config", str(path), "--topic", "outcomes", "--link", LINK, "--user", "alice",
                      "--since", "1h", env=env)
    records = [json.loads(x) for x in outcomes.stdout.splitlines()]
    actions = [r["action"] for r in records]
    # one PATCH; a request folded before A's new username was seen is answered already-equal
    assert outcomes.returncode == 0 and actions[0] == "corrected" and set(actions[1:]) <= {"already-equal"}
    assert all(r["link"] == LINK and r["user_username"] == "alice" for r in records)
    assert _usync("tail", "--config", str(path), "--user", "alice", "--until", "2000-01-01T00:00:00",
                  env=env).stdout == ""
    events = _usync("tail", "--config", str(path), "--topic", "events", "--user", "alice", "--meta", env=env)
    wrapped = [json.loads(x) for x in events.stdout.splitlines()]
    assert wrapped and all(w["topic"] == f"t-{s.suffix}.offering-users.events" for w in wrapped)
    assert all(any(u["user_username"] == "alice" for u in w["record"]["body"].get("users", [])) or
               w["record"]["body"]["kind"] != "snapshot" for w in wrapped)

    # -- topics schema: what the topics hold validates against what the command prints --------
    schema = json.loads(_usync("topics", "schema", "--config", str(path), env=env).stdout)
    assert schema["outcomes"]["x-topic"] == f"t-{s.suffix}.username-sync.outcomes"
    for record in records:
        jsonschema.validate(record, schema["outcomes"])
    for w in wrapped:
        jsonschema.validate(w["record"], schema["events"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**records[0], "action": "exploded"}, schema["outcomes"])

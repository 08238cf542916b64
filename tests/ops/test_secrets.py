"""Tokens and passwords never appear in logs, topic records or error messages.

The bridge and a worker run as processes (JSON logs) against the simulator with
distinctive secret values; a site with a wrong token (401 from the API) and a
subscription with a wrong broker password (refused by RabbitMQ) provoke the error
paths; then every log line, every record of every topic of the run (keys, values,
headers) and the CLI's error messages are searched for the secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.app.harness import ROOT, USYNC, WorkerProcess, free_port, until
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ

pytestmark = pytest.mark.services


def _secret(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}"


def _set_token(site, token: str) -> None:
    """Give the simulated staff user a distinctive token (as waldursim's scenarios do)."""
    site.store.users_by_token.pop(site.staff.token, None)
    site.staff.token = token
    site.store.users_by_token[token] = site.staff


def _config(s, links_target_c: str, bad_vhost: str) -> str:
    return f'''
app_id = "usync-secrets-{s.suffix}"
reconcile_interval = 3600
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
events_topic = "t-{s.suffix}.events"
dlq_topic = "t-{s.suffix}.dlq"
outcomes_topic = "t-{s.suffix}.outcomes"
partitions = 2
[sites.a]
api_url = "{s.a.url}"
token_env = "SECRET_TOKEN_A"
broker_url = "{RABBITMQ.web_stomp_url}"
register = true
[sites.b]
api_url = "{s.b.url}"
token_env = "SECRET_TOKEN_B"
broker_url = "{RABBITMQ.web_stomp_url}"
register = true
[sites.c]                      # A again, with a token the API refuses (401)
api_url = "{s.a.url}"
token_env = "SECRET_TOKEN_WRONG"
broker_url = "{RABBITMQ.web_stomp_url}"
register = true
[sites.d]                      # A again, a subscription whose broker password RabbitMQ refuses
api_url = "{s.a.url}"
token_env = "SECRET_TOKEN_A"
broker_url = "{RABBITMQ.web_stomp_url}"
[[sites.d.subscriptions]]
login = "{bad_vhost}"
vhost = "{bad_vhost}"
queues = ["nope"]
passcode_env = "SECRET_BROKER_PASSWORD"
[[links]]
name = "a-from-b"
target = {{ site = "a", offering = "{s.offering_a.uuid}" }}
source = {{ site = "b", offering = "{s.offering_b.uuid}" }}
[[links]]
name = "c-from-b"
target = {{ site = "c", offering = "{links_target_c}" }}
source = {{ site = "b", offering = "{s.offering_b.uuid}" }}
[[links]]
name = "d-from-b"
target = {{ site = "d", offering = "{links_target_c}" }}
source = {{ site = "b", offering = "{s.offering_b.uuid}" }}
'''


async def _records(topics: list[str]) -> list[bytes]:
    """Every key, value and header value of every record of ``topics``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=15_000)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics for p in cluster.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[bytes] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            for tp, messages in (await consumer.getmany(*remaining, timeout_ms=1000)).items():
                for m in messages:
                    out += [m.key or b"", m.value or b""] + [v for _k, v in m.headers or ()]
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def test_secrets_never_leak(setup):
    s = setup
    secrets = {"SECRET_TOKEN_A": _secret("tokA"), "SECRET_TOKEN_B": _secret("tokB"),
               "SECRET_TOKEN_WRONG": _secret("tokWrong"), "SECRET_BROKER_PASSWORD": _secret("brokerPw")}
    _set_token(s.a, secrets["SECRET_TOKEN_A"])
    _set_token(s.b, secrets["SECRET_TOKEN_B"])
    a_ou, b_ou = s.add_user("alice")
    other = s.a.create_offering(s.a.create_customer("sp2"), "other")
    path = s.tmp / "usync.toml"
    path.write_text(_config(s, other.uuid, f"nobody-{s.suffix}"))
    env = {**os.environ, **secrets, "USYNC_LOG_FORMAT": "json"}

    bridge_port = free_port()
    bridge_log = s.tmp / "bridge.log"
    with open(bridge_log, "wb") as log:
        bridge = subprocess.Popen([USYNC, "--log-level", "debug", "bridge", "--config", str(path), "--health-port",
                                   str(bridge_port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        worker = WorkerProcess(path, env, s.tmp, 0, [])
        s.workers.append(worker)
        await worker.ready()

        async def bridge_state():
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.get(f"http://127.0.0.1:{bridge_port}/health/ready")
                return r.json()
            except (httpx.HTTPError, ValueError):
                return None

        # the good sites sync; the bad ones keep failing (and logging) meanwhile
        s.b.set_username(b_ou, "alice_b")
        await until(lambda: s.a.offering_user(a_ou).username == "alice_b", 120, "A's username to become B's")
        await until(lambda: "c: registration failed" in bridge_log.read_text() and "HTTP 401" in bridge_log.read_text(),
                    90, "the bridge to report the API's 401")
        await until(lambda: "credentials rejected" in bridge_log.read_text(), 90, "the broker to refuse d's login")
        await until(lambda: "site c answers 401" in worker.log_text(), 120, "the worker to report the 401")
        state = await bridge_state()
    finally:
        bridge.terminate()
        bridge.wait(60)
        for w in s.workers:
            w.stop()

    # errors on the command line: a bad config and an unreachable worker
    bad = s.tmp / "bad.toml"
    bad.write_text(path.read_text().replace("ws://127.0.0.1", "http://127.0.0.1"))
    check = subprocess.run([USYNC, "config", "check", str(bad)], capture_output=True, text=True, env=env, timeout=60)
    status = subprocess.run([USYNC, "status", "--config", str(path), "--worker", "http://127.0.0.1:9/", "--timeout", "20"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 2 and status.returncode == 1

    logs = {"bridge": bridge_log.read_text(), "worker": worker.log_text(), "check": check.stdout + check.stderr,
            "status": status.stdout + status.stderr, "bridge health": json.dumps(state)}
    for process in ("bridge", "worker"):  # --log-format json / USYNC_LOG_FORMAT=json: every line an object
        lines = [line for line in logs[process].splitlines() if line.strip()]
        assert lines and all(json.loads(line)["level"] for line in lines), process
    names = [f"t-{s.suffix}.events", f"t-{s.suffix}.dlq", f"t-{s.suffix}.outcomes", f"usync-secrets-{s.suffix}-by-link"]
    records = await _records(names)
    assert len(records) > 10
    for name, secret in secrets.items():
        for where, text in logs.items():
            assert secret not in text, f"{name} in the {where} output"
        for record in records:
            assert secret.encode() not in record, f"{name} in a topic record"

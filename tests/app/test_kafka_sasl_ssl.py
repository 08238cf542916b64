"""Kafka over SASL_SSL only (services/kafka.sh's SCRAM-SHA-512 listener with the test CA's
certificate) and Waldur over HTTPS: the bridge, the worker (faust included), ``usync
status``, ``usync replay`` and ``usync tail`` all work against it, and A converges with B.
Wrong SASL credentials: one ERROR naming the cluster and the broker's reason, ``/health``
says the connection is refused and why, both processes retry and recover once the SCRAM
user exists."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import httpx
import pytest

from tests.app.harness import ROOT, USYNC, LinkSpec, bridge_and_worker, free_port, until
from tests.support.processes import terminate
from tests.support.services import KAFKA_SASL_PASSWORD, KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_SASL_USER, add_scram_user
from tests.support.tls import broker_pki

pytestmark = pytest.mark.services


@pytest.fixture
def sim_federation(sim_federation):  # noqa: F811  (the conftest's, every site's API over https://)
    sim_federation.tls = broker_pki().server.server_context()
    return sim_federation


def _usync(s, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([USYNC, *args], capture_output=True, text=True, env=s.env, cwd=ROOT, timeout=180)


async def test_everything_works_over_kafka_sasl_ssl_only(setup, bridge, monkeypatch):
    s = setup
    pki = broker_pki()
    monkeypatch.setenv("USYNC_KAFKA_PASSWORD", KAFKA_SASL_PASSWORD)
    kafka = (f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "{KAFKA_SASL_USER}"\n'
             f'sasl_password_env = "USYNC_KAFKA_PASSWORD"\nssl_cafile = "{pki.ca}"\n')
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], bootstrap=KAFKA_SASL_SSL_BOOTSTRAP,
                          kafka_extra=kafka, site_extra=f'ca_file = "{pki.ca}"\n')
    a_ou, b_ou = s.add_user("carol")
    _, worker = await bridge_and_worker(s, bridge, path)
    s.b.set_username(b_ou, "carol_b")  # an event: bridge -> Kafka -> worker -> PATCH on A
    await until(lambda: s.a.offering_user(a_ou).username == "carol_b", 90, "A to follow B")

    status = _usync(s, "status", "--config", str(path), "--worker", worker.url, "--json")
    report = json.loads(status.stdout)
    assert report["errors"] == [] and report["workers"] == {worker.url: "ok"}, status.stderr
    replay = _usync(s, "replay", "--config", str(path), "--compare", worker.url + "/usync/table/")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    tail = _usync(s, "tail", "--config", str(path), "--topic", "outcomes", "--limit", "1")
    assert tail.returncode == 0 and json.loads(tail.stdout.splitlines()[0])["link"] == "hpc", tail.stderr
    for output in (worker.log_text(), status.stdout + status.stderr, replay.stdout + replay.stderr, tail.stdout):
        assert KAFKA_SASL_PASSWORD not in output


SASL_REASON = "SASL authentication refused: Authentication failed during authentication due to invalid credentials"


def _sasl_kafka(user: str, password_env: str) -> str:
    return (f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "{user}"\n'
            f'sasl_password_env = "{password_env}"\nssl_cafile = "{broker_pki().ca}"\n')


async def _json(url: str) -> dict | None:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url)).json()
    except (httpx.HTTPError, ValueError):
        return None


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


async def test_wrong_sasl_credentials_are_one_clear_error_and_both_processes_recover(setup, monkeypatch):
    s = setup
    user, password = f"usync-late-{s.suffix}", f"late-{uuid.uuid4().hex}"
    monkeypatch.setenv("USYNC_KAFKA_LATE_PASSWORD", password)  # the SCRAM user does not exist yet
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], bootstrap=KAFKA_SASL_SSL_BOOTSTRAP,
                          kafka_extra=_sasl_kafka(user, "USYNC_KAFKA_LATE_PASSWORD"),
                          site_extra=f'ca_file = "{broker_pki().ca}"\n')
    a_ou, b_ou = s.add_user("dora")
    bridge_port, bridge_log = free_port(), s.tmp / "bridge.log"
    with open(bridge_log, "wb") as out:
        bridge = subprocess.Popen([USYNC, "bridge", "--config", str(path), "--health-port", str(bridge_port)],
                                  stdout=out, stderr=subprocess.STDOUT, env=s.env, cwd=ROOT)
    bridge_health = f"http://127.0.0.1:{bridge_port}/health"
    try:
        worker = s.start_worker(path)
        await worker.answers()  # /health answers while the worker waits for Kafka

        async def refused() -> bool:
            health, ours = (await worker.get("/health")).json(), await _json(bridge_health)
            kafka = (ours or {}).get("components", {}).get("kafka", {})
            return (health["kafka"]["state"] == "refused" and SASL_REASON in health["kafka"]["reason"]
                    and kafka.get("state") == "refused" and SASL_REASON in kafka.get("detail", ""))
        await until(refused, 60, "both /health to say Kafka refuses the connection and why")
        health, ours = (await worker.get("/health")).json(), await _json(bridge_health)
        assert health["status"] == "degraded" and health["kafka"]["servers"] == KAFKA_SASL_SSL_BOOTSTRAP
        assert KAFKA_SASL_SSL_BOOTSTRAP in ours["components"]["kafka"]["detail"] and ours["ready"] is False
        retries = lambda text: text.count("failed (KafkaRefused")  # noqa: E731
        await until(lambda: retries(worker.log_text()) >= 3 and retries(bridge_log.read_text()) >= 3, 60,
                    "three retries with backoff in each process")
        assert bridge.poll() is None and worker.proc.poll() is None  # both keep running
        for log in (worker.log_text(), bridge_log.read_text()):
            [error] = _errors(log)  # one ERROR per distinct reason, not one per retry
            assert KAFKA_SASL_SSL_BOOTSTRAP in error and SASL_REASON in error, error
            assert password not in log

        add_scram_user(user, password)  # Kafka's own kafka-configs, at run time
        fixed = time.monotonic()
        await until(lambda: _ready(worker.url + "/health/ready"), 120, "the worker to be ready")
        await until(lambda: _ready(bridge_health + "/ready"), 120, "the bridge to be ready")
        recovered = time.monotonic() - fixed
        health = (await worker.get("/health")).json()
        assert health["kafka"] == {"servers": KAFKA_SASL_SSL_BOOTSTRAP, "state": "connected", "reason": ""}
        s.b.set_username(b_ou, "dora_b")  # an event: bridge -> Kafka (SASL_SSL) -> worker -> PATCH on A
        await until(lambda: s.a.offering_user(a_ou).username == "dora_b", 90, "A to follow B")
        print(f"credentials fixed -> both ready in {recovered:.1f} s")
    finally:
        terminate(bridge, 30)
    for log in (worker.log_text(), bridge_log.read_text()):
        assert len(_errors(log)) == 1 and f"Kafka {KAFKA_SASL_SSL_BOOTSTRAP}: connected again" in log
        assert password not in log


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False

"""Kafka over SASL_SSL only (services/kafka.sh's SCRAM-SHA-512 listener with the test CA's
certificate) and Waldur over HTTPS: the bridge, the worker (faust included), ``usync
status``, ``usync replay`` and ``usync tail`` all work against it, and A converges with B."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.app.harness import ROOT, USYNC, LinkSpec, bridge_and_worker, until
from tests.support.services import KAFKA_SASL_PASSWORD, KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_SASL_USER
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

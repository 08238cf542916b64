"""Waldur over HTTPS with the test CA (tests/support/tls.py): A converges with B with every
API call (registration, lookups, reconciler, the correct stage) over ``https://``, A
requiring a client certificate (mutual TLS); a
refused handshake (unknown CA, expired, wrong host) is one ERROR line naming the site and
the reason, ``/health`` names the site, the worker keeps retrying and recovers once the
site serves the right certificate."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.app.harness import LinkSpec, bridge_and_worker, bridge_ready, patches, until
from tests.support.tls import pki  # noqa: F401

pytestmark = pytest.mark.services


@pytest.fixture
def sim_federation(sim_federation, pki):  # noqa: F811  (the conftest's, every site's API over https://)
    sim_federation.tls = pki.server.server_context()
    return sim_federation


async def test_a_converges_with_b_over_https(setup, pki, bridge):  # noqa: F811
    s = setup
    assert s.a.url.startswith("https://") and s.b.url.startswith("https://")
    await s.a.restart_listener(pki.server.server_context(client_ca=pki.ca))  # A wants a client certificate
    a_ou, b_ou = s.add_user("alice")
    s.b.set_username(b_ou, "alice_b")  # before start: found by the start-up reconcile
    trust = (f'ca_file = "{pki.ca}"\nclient_cert_file = "{pki.client.cert}"\n'
             f'client_key_file = "{pki.client.key}"\n')
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], site_extra=trust)
    _, worker = await bridge_and_worker(s, bridge, path)  # the bridge registered over https://

    await until(lambda: s.a.offering_user(a_ou).username == "alice_b", 60, "A to follow B (reconciler, correct stage)")
    s.b.set_username(b_ou, "alice_new")  # an event: lookups and the correct stage
    await until(lambda: s.a.offering_user(a_ou).username == "alice_new", 60, "A to follow B's event")
    assert len(patches(s.a)) == 2
    assert any(c.path.endswith("/register_event_subscription/") for c in s.a.calls.log)
    health = (await worker.get("/health")).json()
    assert health["tls_refused"] == {}


# (certificate the site serves, the handshake's reason as OpenSSL words it)
REFUSALS = [
    ("stranger", "unable to get local issuer certificate"),  # signed by another CA
    ("expired", "certificate has expired"),
    ("wrong_host", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
]


async def test_a_refused_handshake_is_one_clear_error_and_the_worker_recovers(setup, pki):  # noqa: F811
    s = setup
    a_ou, b_ou = s.add_user("bob")
    s.b.set_username(b_ou, "bob_b")
    first = getattr(pki, REFUSALS[0][0])
    await s.a.restart_listener(first.server_context())
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False,
                          site_extra=f'ca_file = "{pki.ca}"\n')
    worker = s.start_worker(path)
    await worker.ready()

    for n, (pair, reason) in enumerate(REFUSALS):
        if n:
            await s.a.restart_listener(getattr(pki, pair).server_context())

        async def refused(reason: str = reason) -> bool:
            health = (await worker.get("/health")).json()
            return reason in health["tls_refused"].get("a", "")
        await until(refused, 60, f"/health to name site a's refusal ({pair})")
        seen = _tls_calls(worker)
        await until(lambda: _tls_calls(worker) > seen, 60, "another attempt (retrying with backoff)")  # noqa: B023
        assert worker.proc.poll() is None, "the worker must keep running"
        said = [line for line in worker.log_text().splitlines() if reason in line]
        lines = [line for line in said if " ERROR " in line]
        assert len(lines) == 1, said  # one ERROR per outage, not one per retry
        assert "site a" in lines[0] and s.a.staff_token not in lines[0]
        # (and at most the one WARNING that the site is failing, which names the same reason)
        assert len(said) - len(lines) <= 1 and not any(s.a.staff_token in line for line in said), said

    await s.a.restart_listener(pki.server.server_context())  # the right certificate is in place
    await until(lambda: s.a.offering_user(a_ou).username == "bob_b", 90, "A to converge after the fix")
    health = (await worker.get("/health")).json()
    assert health["tls_refused"] == {}
    assert s.a.staff_token not in worker.log_text() and s.b.staff_token not in worker.log_text()


def _tls_calls(worker) -> float:
    """usync_http_calls_total{site="a",status="tls"} of the worker."""
    try:
        text = httpx.get(worker.url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0
    found = re.findall(r'usync_http_calls_total\{[^}]*site="a"[^}]*status="tls"[^}]*\} (\S+)', text)
    return sum(float(v) for v in found)


async def test_the_bridge_registration_names_the_refused_handshake_and_recovers(setup, pki, bridge):  # noqa: F811
    s = setup
    await s.a.restart_listener(pki.expired.server_context())
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], site_extra=f'ca_file = "{pki.ca}"\n')
    b = await bridge(s.config(path))

    def registration_detail() -> str:
        state = b.health.components.get("a/registration")
        return state.detail if state is not None else ""
    await until(lambda: "TLS handshake refused: certificate verify failed: certificate has expired"
                in registration_detail(), 30, "the bridge's /health to say why site a's registration fails")
    assert s.a.staff_token not in registration_detail()
    await s.a.restart_listener(pki.server.server_context())
    await until(lambda: bridge_ready(b, 2), 60, "the bridge to register and subscribe after the fix")

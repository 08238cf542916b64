"""The Waldur HTTP client against ``httpx.MockTransport``: no network.

A failing site is reported down once and up once (``SiteHealth``), each failure is
labelled as what it is, and a PATCH that A refuses raises :class:`Refused` with A's
body, capped and without the token.
"""

from __future__ import annotations

import asyncio

import logging
import types

import aiohttp
import httpx
import pytest
from httpx_aiohttp.transport import map_aiohttp_exceptions

from streams.adapters.waldur import DOWN_AFTER, REFUSAL_DETAIL_MAX, SiteClient
from streams.contract.config import Rates, Secret
from streams.errors import GaveUp, Refused
from streams.metrics import Metrics

TOKEN = "s3cr3t-token-value"
OU = "1" * 32
RECORD = {"uuid": OU, "user_uuid": "2" * 32, "user_username": "alice", "offering_uuid": "3" * 32,
          "username": "alice_b", "state": "OK"}


class Script:
    """Answers each request with the next scripted answer (a status, or an exception to raise)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer, json=RECORD if answer == 200 else {"detail": "no"})  # type: ignore[arg-type]


def client(script: Script, metrics: Metrics | None = None, max_attempts: int = 8) -> SiteClient:
    return SiteClient("b", "http://b.example/api/", Secret(TOKEN), Rates(requests_per_second=1000, burst=1000),
                      metrics or Metrics(), max_attempts=max_attempts, backoff_base=0.001,
                      transport=httpx.MockTransport(script))


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def site_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "usync.waldur"]


async def test_a_site_failing_in_a_row_is_down_once_then_up_once(caplog):
    caplog.set_level(logging.INFO, logger="usync.waldur")
    metrics = Metrics()
    site = client(Script(*[503] * (DOWN_AFTER + 3), 200), metrics)
    assert sample(metrics, "usync_site_up", site="b") == 1
    status, record = await site.get_offering_user(OU)  # 6 failed attempts, then the answer
    assert (status, record.username) == (200, "alice_b")
    logs = site_logs(caplog)
    assert [level for level, _ in logs] == [logging.WARNING, logging.INFO]  # per outage, not per call
    assert "site b is failing" in logs[0][1] and "HTTP 503" in logs[0][1]
    assert "site b answers again" in logs[1][1]
    assert site.health.up and sample(metrics, "usync_site_up", site="b") == 1
    assert sample(metrics, "usync_http_calls_total", site="b", method="GET", status="503") == DOWN_AFTER + 3


async def test_the_site_is_down_with_its_reason_while_the_failures_last():
    metrics = Metrics()
    site = client(Script(503), metrics, max_attempts=DOWN_AFTER)
    with pytest.raises(GaveUp):
        await site.get_offering_user(OU)
    assert not site.health.up
    report = site.health.report()
    assert (report["up"], report["reason"]) == (False, "HTTP 503") and report["since"] > 0
    assert sample(metrics, "usync_site_up", site="b") == 0


async def test_a_down_sites_probe_is_not_one_of_the_calls_attempts_and_its_answer_wakes_the_others():
    """streams.adapters.probe: the calls' own retries are 15-30 s away; the probes (every
    20 ms here) find the site back, and no call is given up for the probes it carried
    (two attempts each: one of its own, then only probes until the site answers)."""
    script = Script(*[503] * 8, 200)
    site = SiteClient("b", "http://b.example/api/", Secret(TOKEN), Rates(requests_per_second=1000, burst=1000),
                      Metrics(), max_attempts=2, backoff_base=30.0, transport=httpx.MockTransport(script))
    site.health.down_after, site.health.back.interval = 1, 0.02
    calls = [asyncio.create_task(site.get_offering_user(OU)) for _ in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert [status for status, _record in results] == [200] * 4
    assert len(script.seen) > 8 and site.health.up


async def test_fewer_failures_than_the_threshold_do_not_say_down(caplog):
    caplog.set_level(logging.INFO, logger="usync.waldur")
    site = client(Script(*[429] * (DOWN_AFTER - 1), 200))
    await site.get_offering_user(OU)
    await site.get_offering_user(OU)
    assert site.health.up and site_logs(caplog) == []


def refused_as_httpx_aiohttp_maps_it() -> Exception:
    """What httpx-aiohttp's own exception map makes of aiohttp's refused connection
    (today an ``httpx.ConnectTimeout`` whose cause is the refusal)."""
    key = types.SimpleNamespace(host="127.0.0.1", port=1, ssl=True)
    try:
        with map_aiohttp_exceptions():
            raise aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))  # type: ignore[arg-type]
    except Exception as mapped:  # noqa: BLE001 -- whatever the library maps it to
        return mapped
    raise AssertionError("not raised")


@pytest.mark.parametrize(("failure", "label"), [
    (httpx.ConnectError("Connection refused"), "refused"),
    (httpx.ReadTimeout("timed out"), "timeout"),
    (httpx.RemoteProtocolError("peer closed"), "connection-error"),
    (refused_as_httpx_aiohttp_maps_it(), "refused"),
])
async def test_each_failure_is_labelled_as_what_it_is(failure, label):
    metrics = Metrics()
    site = client(Script(failure), metrics, max_attempts=DOWN_AFTER)
    with pytest.raises(GaveUp):
        await site.get_offering_user(OU)
    assert sample(metrics, "usync_http_calls_total", site="b", method="GET", status=label) == DOWN_AFTER
    assert not site.health.up and site.health.report()["reason"].startswith(label)


async def test_a_4xx_answer_is_an_answer_the_site_is_up():
    site = client(Script(*[503] * DOWN_AFTER, 404))
    assert await site.get_offering_user(OU) == (404, None)
    assert site.health.up


async def test_a_refused_patch_raises_with_the_body_capped_and_the_token_masked():
    body = {"username": ["This username is reserved and cannot be used."], "echo": f"Token {TOKEN}",
            "padding": "x" * 5000}
    site = client(Script(httpx.Response(400, json=body)))
    with pytest.raises(Refused) as refused:
        await site.patch_username(OU, "root")
    assert refused.value.status == 400
    assert "This username is reserved and cannot be used." in refused.value.detail
    assert TOKEN not in refused.value.detail and "***" in refused.value.detail
    assert len(refused.value.detail.encode()) <= REFUSAL_DETAIL_MAX
    assert TOKEN not in str(refused.value)


async def test_a_patch_of_a_missing_offering_user_answers_404_and_does_not_raise():
    site = client(Script(404))
    assert await site.patch_username(OU, "alice_b") == (404, None)

"""The worker's operator views (/usync/table/, /usync/drift/, POST /usync/reconcile/) want the
bearer token named by ``web_token_env``; /health and /metrics stay open; ``usync status``
and ``replay --compare`` send it; the token is never logged. Without ``web_token_env`` the
views stay open and the worker says so once, at start."""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import pytest

from tests.app.harness import ROOT, USYNC, LinkSpec, until

pytestmark = pytest.mark.services
OPERATOR_VIEWS = [("GET", "/usync/table/"), ("GET", "/usync/drift/"), ("POST", "/usync/reconcile/")]
OPEN_VIEWS = [("GET", "/health"), ("GET", "/metrics")]


async def _statuses(worker, headers: dict[str, str], views) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        return {path: (await client.request(method, worker.url + path)).status_code for method, path in views}


async def test_operator_views_need_the_token(setup, monkeypatch):
    s = setup
    token = f"web-token-{uuid.uuid4().hex}"
    monkeypatch.setenv("USYNC_WEB_TOKEN", token)
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False)
    path.write_text('web_token_env = "USYNC_WEB_TOKEN"\n' + path.read_text())
    worker = s.start_worker(path)
    await worker.ready()

    assert await _statuses(worker, {}, OPERATOR_VIEWS) == {p: 401 for _, p in OPERATOR_VIEWS}
    for wrong in (f"Bearer {token}x", f"Token {token}", token, "Bearer", f"Bearer {token[:-1]}"):
        assert set((await _statuses(worker, {"Authorization": wrong}, OPERATOR_VIEWS)).values()) == {401}, wrong
    assert await _statuses(worker, {}, OPEN_VIEWS) == {p: 200 for _, p in OPEN_VIEWS}
    bearer = {"Authorization": f"Bearer {token}"}
    assert await _statuses(worker, bearer, OPERATOR_VIEWS) == {p: 200 for _, p in OPERATOR_VIEWS}

    status = subprocess.run([USYNC, "status", "--config", str(path), "--worker", worker.url, "--json"],
                            capture_output=True, text=True, env=s.env, cwd=ROOT, timeout=120)
    report = json.loads(status.stdout)
    assert report["workers"] == {worker.url: "ok"}, status.stderr  # `usync status` sent the token
    assert token not in status.stdout + status.stderr
    assert token not in worker.log_text()
    assert "web_token_env is not configured" not in worker.log_text()


async def test_without_a_token_the_views_stay_open_and_the_worker_warns_once(setup):
    s = setup
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False)
    worker = s.start_worker(path)
    await worker.ready()
    assert await _statuses(worker, {}, OPERATOR_VIEWS) == {p: 200 for _, p in OPERATOR_VIEWS}
    warnings = await until(lambda: [line for line in worker.log_text().splitlines()
                                    if "web_token_env is not configured" in line], 30, "the start-up warning")
    assert len(warnings) == 1 and "WARNING" in warnings[0]

"""Scenarios load fast and serve; the CLI prints each site's URL and tokens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from waldursim.scenario import build_federation, load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "waldursim" / "scenarios" / "two-sites.toml"


async def test_ten_thousand_users_per_offering_load_fast(tmp_path: Path) -> None:
    spec = {"sites": [{"name": s, "users": [{"username": "agent", "token": f"tok-{s}"}], "offerings": [
        {"name": f"hpc-{s}", "managers": ["agent"], "users": 10_000,
         "username_pattern": "{user}" if s == "b" else ""}]} for s in ("a", "b")]}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(spec))
    t0 = time.monotonic()
    federation = build_federation(load_scenario(path), broker_enabled=False)
    assert time.monotonic() - t0 < 3.0
    await federation.start()
    try:
        b = federation["b"]
        async with httpx.AsyncClient(base_url=b.url, headers={"Authorization": "Token tok-b"}) as c:
            r = await c.get("marketplace-offering-users/", params={"state": "OK", "page_size": 300})
            assert r.headers["X-Result-Count"] == "10000" and r.json()[0]["username"] == "user00000"
        a = federation["a"]
        async with httpx.AsyncClient(base_url=a.url, headers={"Authorization": "Token tok-a"}) as c:
            r = await c.get("marketplace-offering-users/", params={"state": "Requested", "user_username": "user00042"})
            assert r.json()[0]["username"] == "" and r.headers["X-Result-Count"] == "1"
    finally:
        await federation.stop()


def test_bad_scenario_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[sites]]\nname = "a"\n[[sites.offerings]]\nname = "x"\nusers = "many"\n')
    with pytest.raises(msgspec.ValidationError, match="users"):
        load_scenario(path)


async def test_cli_serves_the_example(tmp_path: Path) -> None:
    info = tmp_path / "info.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waldursim", "serve", str(EXAMPLE), "--no-broker", "--json", "--info-file", str(info),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        document = json.loads(line)
        assert json.loads(info.read_text()) == document
        sites = {s["name"]: s for s in document["sites"]}
        assert set(sites) == {"a", "b"}
        b = sites["b"]
        token = next(u["token"] for u in b["users"] if u["username"] == "agent-b")
        async with httpx.AsyncClient(base_url=b["url"], headers={"Authorization": f"Token {token}"}) as c:
            r = await c.get("marketplace-offering-users/")
            assert r.status_code == 200 and r.headers["X-Result-Count"] == "1000"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_cli_serves_over_https_with_the_given_certificate(tmp_path: Path) -> None:
    import ssl

    from tests.support.tls import make_pki

    pki = make_pki(tmp_path / "tls")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waldursim", "serve", str(EXAMPLE), "--no-broker", "--json",
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        b = next(s for s in json.loads(line)["sites"] if s["name"] == "b")
        assert b["url"].startswith("https://127.0.0.1:")
        token = next(u["token"] for u in b["users"] if u["username"] == "agent-b")
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        async with httpx.AsyncClient(base_url=b["url"], headers={"Authorization": f"Token {token}"}, verify=trusted) as c:
            assert (await c.get("marketplace-offering-users/")).status_code == 200
        async with httpx.AsyncClient(base_url=b["url"]) as c:  # the system's CAs do not know the test CA
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get("marketplace-offering-users/")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0

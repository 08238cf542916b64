"""The alert rules (compose/prometheus/alerts.yml), on Debian's Prometheus 2.42 and promtool.

- ``promtool test rules``: every alert fires on its condition, after its ``for``, and
  stays quiet otherwise (compose/prometheus/alerts_test.yml); every alert has a test.
- A real Prometheus (services/prometheus.sh, on loopback) scrapes a running bridge and a
  running worker: every metric of the operator guide's table appears with its labels,
  and the alert rules load (``/api/v1/rules``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.app.harness import ROOT, USYNC, LinkSpec, free_port, until, usernames
from tests.support.processes import terminate
from tests.support.services import port

PROM = ROOT / "compose" / "prometheus"
SCRIPT = ROOT / "services" / "prometheus.sh"
PROMETHEUS_PORT = port("PROMETHEUS_PORT", 9090)
GUIDE = ROOT / "docs" / "operator-guide.md"


def alert_names(path: Path) -> set[str]:
    return set(re.findall(r"^\s*- alert: (\w+)$", path.read_text(), re.M))


def documented_metrics() -> dict[str, set[str]]:
    """name -> label names, from the metrics table of the operator guide."""
    rows = re.findall(r"^\| `(usync_[a-z_]+)` \| (\w+) \|([a-z_, ]*)\|", GUIDE.read_text(), re.M)
    return {name: {label.strip() for label in labels.split(",") if label.strip()} for name, _kind, labels in rows}


def test_the_alert_rules_pass_their_promtool_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=PROM, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    assert tested == alert_names(PROM / "alerts.yml"), "every alert has a promtool test"


def prometheus(action: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROMETHEUS_CONFIG": str(config), "PROMETHEUS_PORT": str(PROMETHEUS_PORT)}
    return subprocess.run([str(SCRIPT), action], capture_output=True, text=True, env=env, timeout=120, check=False)


async def api(path: str, **params: Any) -> Any:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/{path}", params=params)
        return r.json()["data"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def missing_metrics(wanted: dict[str, set[str]]) -> dict[str, set[str]]:
    """The documented metrics Prometheus has no series of with all their labels (name -> labels)."""
    missing = {}
    for name, labels in wanted.items():
        series = await api("series", **{"match[]": f'{{__name__=~"{name}(_bucket|_count|_sum)?"}}'}) or []
        if not any(labels <= set(s) and {"job", "instance"} <= set(s) for s in series):
            missing[name] = labels
    return missing


async def test_prometheus_scrapes_the_bridge_and_a_worker_and_loads_the_alerts(setup):
    s = setup
    _, b_ou = s.add_user("m1")
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    bridge_port = free_port()
    with open(s.tmp / "bridge.log", "wb") as log:
        bridge = subprocess.Popen([USYNC, "bridge", "--config", str(path), "--health-port", str(bridge_port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=s.env, cwd=ROOT)
    config = s.tmp / "prometheus.yml"
    try:
        worker = s.start_worker(path)
        await worker.ready()
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROM / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "usync-bridge", "static_configs": [{"targets": [f"127.0.0.1:{bridge_port}"]}]},
                {"job_name": "usync-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}]},
            ],
        }))
        prometheus("stop", config)  # another configuration may be loaded
        started = prometheus("start", config)
        assert started.returncode == 0, started.stderr

        async def both_up() -> bool:
            result = (await api("query", query="up") or {}).get("result", [])
            return {r["metric"]["job"] for r in result if r["value"][1] == "1"} == {"usync-bridge", "usync-worker"}
        await until(both_up, 60, "Prometheus to scrape the bridge and the worker")

        # traffic, so that every labelled series has a child: an event relayed and folded, a
        # correction, and a user the identity index does not know yet (a lookup)
        await until(lambda: _bridge_ready(bridge_port), 60, "the bridge's subscriptions")
        s.b.set_username(b_ou, "m1_b")
        await until(lambda: usernames(s.a, s.offering_a) == {"m1": "m1_b"}, 90, "A to converge")
        s.add_user("m2")
        wanted = documented_metrics()
        assert len(wanted) >= 20 and wanted["usync_http_calls_total"] == {"site", "method", "status"}
        missing: dict[str, set[str]] = {}

        async def none_missing() -> bool:
            nonlocal missing
            missing = await missing_metrics(wanted)
            return not missing
        try:
            await until(none_missing, 90, "every documented metric in Prometheus, with its labels")
        except AssertionError:
            raise AssertionError(f"documented metrics Prometheus does not have (with these labels): {missing}") from None
        rules = await api("rules")
        loaded = {r["name"]: r for g in rules["groups"] for r in g["rules"]}
        assert set(loaded) == alert_names(PROM / "alerts.yml")
        assert all(r["health"] == "ok" for r in loaded.values()), loaded
    finally:
        prometheus("stop", config)
        terminate(bridge, 30)


async def _bridge_ready(bridge_port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{bridge_port}/health/ready")).status_code == 200
    except httpx.HTTPError:
        return False

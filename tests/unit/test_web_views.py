"""The worker's health views (streams.stages.web.Views) over plain callables: no faust, no broker."""

from __future__ import annotations

from streams.core import empty_state
from streams.metrics import Metrics
from streams.stages.web import Views


async def _no_reconcile() -> dict[str, int]:
    return {}


def views(report: dict, components: dict[str, tuple[str, bool]]) -> Views:
    return Views([], empty_state, Metrics(), _no_reconcile, lambda: dict(report), lambda: dict(components))


READY = {"router": ("joined", True), "sink": ("joined", True), "tables": ("ready", True), "fold": ("started", True)}


def test_ready_only_when_every_component_is():
    assert views({}, READY).readiness() == (200, {"ready": True, "components": {
        "router": {"state": "joined"}, "sink": {"state": "joined"}, "tables": {"state": "ready"},
        "fold": {"state": "started"}}})
    for name, waiting in (("router", "joining"), ("sink", "disconnected"), ("tables", "recovering"), ("fold", "starting")):
        status, body = views({}, {**READY, name: (waiting, False)}).readiness()
        assert (status, body["ready"], body["components"][name]) == (503, False, {"state": waiting})


def test_no_components_is_not_ready():
    assert views({}, {}).readiness()[0] == 503


def test_health_is_degraded_while_a_site_is_down_or_paused():
    up = {"a": {"up": True, "since": 1.0}, "b": {"up": True, "since": 1.0}}
    down = {**up, "b": {"up": False, "reason": "HTTP 503", "since": 2.0}}
    ok = views({"status": "ok", "sites": up, "paused_sites": []}, READY).health()
    assert (ok["status"], ok["ready"]) == ("ok", True)
    degraded = views({"status": "ok", "sites": down, "paused_sites": []}, READY).health()
    assert degraded["status"] == "degraded" and degraded["sites"]["b"]["reason"] == "HTTP 503"
    paused = views({"status": "ok", "sites": up, "paused_sites": ["a"]}, {**READY, "sink": ("joining", False)}).health()
    assert (paused["status"], paused["ready"]) == ("degraded", False)

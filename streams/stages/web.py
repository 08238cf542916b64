"""What the worker's web views answer (registered on faust's web server by the composition root)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from streams.contract.config import Link, Secret
from streams.core import TableState, as_dict, drift_by_link
from streams.metrics import Metrics
from streams.stages.checkpoint import CheckpointDeferred

DRIFT_MAX_AGE = 10.0  # seconds a /metrics scrape may reuse the drift gauges

#: What readiness reads: component name -> (its state, whether that state is ready).
Components = Callable[[], dict[str, tuple[str, bool]]]


class Views:
    """``/usync/table/``, ``/usync/drift/``, ``POST /usync/reconcile/``, ``POST /usync/checkpoint/``, ``/metrics``,
    ``/health``, ``/health/live``, ``/health/ready``."""

    def __init__(self, links: Sequence[Link], state: Callable[[], TableState], metrics: Metrics,
                 reconcile: Callable[[], Awaitable[dict[str, int]]], health: Callable[[], dict[str, Any]],
                 components: Components = dict, token: Secret | None = None,
                 checkpoint: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None) -> None:
        self.links = links
        self.checkpoint = checkpoint
        self.token = token
        self.state = state
        self.metrics = metrics
        self.reconcile = reconcile
        self.health_report = health
        self.components = components
        self._drift_cache: tuple[float, dict[str, Any]] | None = None

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header opens the operator views (table, drift,
        reconcile): ``Bearer <token>``, compared in constant time; anything when no token
        is configured. ``/health`` and ``/metrics`` never ask."""
        if self.token is None:
            return True
        scheme, _, presented = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.token.reveal().encode())

    def table(self) -> bytes:
        return msgspec.json.encode(as_dict(self.state()))

    def drift(self, max_age: float = 0.0) -> dict[str, Any]:
        """Drift per link; a scrape reuses a report younger than ``max_age`` (it walks every row)."""
        cached = self._drift_cache
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        state = self.state()
        report: dict[str, Any] = {"rows": len(state.rows), "links": {}}
        self.metrics.table_rows.set(report["rows"])
        for name, found in drift_by_link(state, self.links).items():  # one pass over the table
            rows, refused = found.drift, found.rejected
            self.metrics.drift.labels(name).set(len(rows))
            self.metrics.rejected_rows.labels(name).set(len(refused))
            report["links"][name] = {
                "drift": len(rows), "users": [r.user_username for r in rows[:100]],
                "rejected": len(refused), "rejected_users": [
                    {"user": r.user_username, "desired": r.rejected_desired, "times": r.rejected_count}
                    for r in refused[:100]],
            }
        self._drift_cache = (time.monotonic(), report)
        return report

    async def reconcile_now(self) -> dict[str, Any]:
        """One reconcile pass now (ops, tests); answers when every page is written."""
        return {"reconciled": await self.reconcile()}

    async def checkpoint_now(self) -> dict[str, Any]:
        """A table checkpoint of every partition this worker folds, now (ops, before an upgrade; tests)."""
        try:
            return {"checkpoints": await self.checkpoint() if self.checkpoint else []}
        except CheckpointDeferred as exc:
            return {"checkpoints": [], "deferred": str(exc)}

    def exposition(self) -> bytes:
        self.drift(max_age=DRIFT_MAX_AGE)  # refresh the gauges
        return self.metrics.exposition()

    def health(self) -> dict[str, Any]:
        """As before, plus ``ready`` and ``sites``; ``status`` is ``degraded`` while a site is
        down or paused, or the report says so (a record dead-lettered lately); always HTTP
        200: whether to route traffic is ``/health/ready``."""
        report = self.health_report()
        sites = report.get("sites", {})
        down = [name for name, site in sites.items() if not site.get("up", True)]
        degraded = bool(down or report.get("paused_sites")) or report.get("status") == "degraded"
        return {**report, "status": "degraded" if degraded else "ok", "ready": self.readiness()[1]["ready"]}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``/health/ready``: 200 once every component is ready, else 503; the bridge's shape
        (``{"ready": ..., "components": {name: {"state": ...}}}``)."""
        components = self.components()
        ready = bool(components) and all(ok for _state, ok in components.values())
        body = {"ready": ready, "components": {name: {"state": state} for name, (state, _ok) in components.items()}}
        return (200 if ready else 503), body

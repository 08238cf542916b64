"""Liveness, readiness and the state of every connection, served over HTTP with the
Prometheus metrics, so an operator sees at a glance which dependency is away."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import prometheus_client
from aiohttp import web


class ComponentState(msgspec.Struct):
    state: str  # connected | disconnected | refused (Kafka: credentials, TLS) | stopped | starting
    detail: str = ""
    since: float = 0.0


@dataclass
class Health:
    """What each connection is doing; ready when every one of them is connected."""

    components: dict[str, ComponentState] = field(default_factory=dict)

    def set(self, name: str, state: str, detail: str = "") -> None:
        current = self.components.get(name)
        if current is None or current.state != state or current.detail != detail:
            self.components[name] = ComponentState(state, detail, time.time())

    @property
    def ready(self) -> bool:
        return bool(self.components) and all(c.state == "connected" for c in self.components.values())

    def report(self) -> dict:
        return {"ready": self.ready, "components": msgspec.to_builtins(self.components)}


def health_app(health: Health, registry: prometheus_client.CollectorRegistry) -> web.Application:
    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response(health.report(), status=200 if health.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(registry),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health", ready)
    app.router.add_get("/metrics", metrics)
    return app

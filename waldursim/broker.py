"""Provisioning on the real RabbitMQ through its management HTTP API, as Waldur does.

Per subscriber: a vhost named after the user uuid, a broker user named after the
subscription uuid whose password is the user's API token, full permissions for it on
that vhost, and queues declared with Waldur's exact arguments. The publisher's own
account (guest by default) is also granted each vhost so it can publish there.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

# Waldur's queue arguments (read back through the management API in the tests).
QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-message-ttl": 3600000,
    "x-max-length": 10000,
    "x-overflow": "reject-publish-dlx",
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": "waldur.dlq.messages",
}


class BrokerError(RuntimeError):
    """The management API refused or could not be reached."""


class BrokerAdmin(msgspec.Struct, kw_only=True):
    """Where the broker is and which admin account provisions and publishes."""

    management_url: str = "http://127.0.0.1:15672"
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    username: str = "guest"
    password: str = "guest"
    timeout: float = 10.0

    def client(self) -> "ManagementClient":
        return ManagementClient(self)

    @classmethod
    def local(cls) -> "BrokerAdmin":
        """The RabbitMQ ``make services`` runs, wherever services/common.sh put it."""
        return cls(management_url=f"http://127.0.0.1:{local_port('RABBITMQ_MGMT_PORT', 15672)}",
                   amqp_port=local_port("RABBITMQ_AMQP_PORT", 5672))


def local_port(name: str, default: int) -> int:
    """A local broker's port as services/common.sh picks it: ``$name``, else
    ``default + $USYNC_PORT_OFFSET`` (a second checkout's brokers)."""
    value = os.environ.get(name)
    if value:
        return int(value)
    return default + int(os.environ.get("USYNC_PORT_OFFSET") or 0)


class ManagementClient:
    """Async wrapper over the few management API calls the simulator makes."""

    def __init__(self, admin: BrokerAdmin) -> None:
        self.admin = admin
        self._http = httpx.AsyncClient(
            base_url=admin.management_url.rstrip("/") + "/api",
            auth=(admin.username, admin.password),
            timeout=admin.timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None, ok_missing: bool = False) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BrokerError(f"RabbitMQ management API unreachable: {exc!r}") from exc
        if response.status_code == 404 and ok_missing:
            return response
        if response.status_code >= 400:
            raise BrokerError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    async def ping(self) -> None:
        await self._call("GET", "/overview")

    async def ensure_vhost(self, vhost: str) -> None:
        await self._call("PUT", f"/vhosts/{quote(vhost, safe='')}", {})

    async def delete_vhost(self, vhost: str) -> None:
        await self._call("DELETE", f"/vhosts/{quote(vhost, safe='')}", ok_missing=True)

    async def ensure_user(self, name: str, password: str) -> None:
        await self._call("PUT", f"/users/{quote(name, safe='')}", {"password": password, "tags": ""})

    async def delete_user(self, name: str) -> None:
        await self._call("DELETE", f"/users/{quote(name, safe='')}", ok_missing=True)

    async def grant(self, vhost: str, user: str) -> None:
        await self._call(
            "PUT",
            f"/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    async def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any] | None = None) -> None:
        await self._call(
            "PUT",
            f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}",
            {"durable": True, "auto_delete": False, "arguments": dict(arguments or QUEUE_ARGUMENTS)},
        )

    async def get_queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        response = await self._call("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}", ok_missing=True)
        return None if response.status_code == 404 else response.json()

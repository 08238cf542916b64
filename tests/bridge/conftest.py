"""Fixtures for the transport tests against the real local RabbitMQ.

Every test session gets its own vhost (Waldur gives each subscriber one too), every
test its own durable queue with Waldur's queue arguments; both are deleted afterwards,
so parallel test runs by others on the same broker are not disturbed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pytest

from bridges.transports.base import BrokerMessage, BrokerConnection
from bridges.transports.registry import open_connection
from tests.support.services import RABBITMQ

HOST = "127.0.0.1"
# The configured broker (tests/support/services.py: default ports unless overridden).
PORTS = {"ws": RABBITMQ.web_stomp_port, "tcp": RABBITMQ.stomp_port, "amqp": RABBITMQ.amqp_port}
URLS = {
    "ws": f"ws://{HOST}:{PORTS['ws']}/ws",
    "tcp": f"stomp://{HOST}:{PORTS['tcp']}",
    "amqp": f"amqp://{HOST}:{PORTS['amqp']}",
}
MGMT = f"{RABBITMQ.management_url}/api"
AUTH = ("guest", "guest")
# What Waldur declares its subscription queues with (as Waldur declares them; checked against the simulator by tests/sim/test_event_routing.py).
WALDUR_QUEUE_ARGS = {
    "x-message-ttl": 3_600_000,
    "x-max-length": 10_000,
    "x-overflow": "reject-publish-dlx",
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": "waldur.dlq.messages",
}


@pytest.fixture(scope="session")
def vhost(rabbitmq: object) -> Iterator[str]:  # rabbitmq: started if down (tests/conftest.py)
    name = f"usync-test-{uuid.uuid4().hex[:12]}"
    try:
        httpx.put(f"{MGMT}/vhosts/{name}", auth=AUTH, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"RabbitMQ management API unreachable ({exc}); run services/rabbitmq.sh start")
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    httpx.put(f"{MGMT}/permissions/{name}/guest", auth=AUTH, json=perms, timeout=10).raise_for_status()
    yield name
    httpx.delete(f"{MGMT}/vhosts/{name}", auth=AUTH, timeout=30)


def _blocking(vhost: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(HOST, PORTS["amqp"], virtual_host=vhost, credentials=pika.PlainCredentials(*AUTH)))


@pytest.fixture
def queue(vhost: str) -> Iterator[str]:
    name = f"subscription_{uuid.uuid4().hex}_offering_{uuid.uuid4().hex}_offering_user"
    with _blocking(vhost) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=WALDUR_QUEUE_ARGS)
    yield name
    with _blocking(vhost) as conn:
        conn.channel().queue_delete(name)


class Broker:
    """Test-side access to the broker: publish like Waldur, inspect queues, consume."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost

    @staticmethod
    def url(kind: str) -> str:
        return URLS[kind]

    @staticmethod
    def body(seq: int) -> bytes:
        return json.dumps({"action": "update", "seq": seq, "username": f"user-{seq}\u00e9"}).encode()

    @staticmethod
    def message_id(seq: int) -> str:
        return f"{seq:032x}"

    def _publish(self, queue: str, n: int, start: int) -> None:
        with _blocking(self.vhost) as conn:
            channel = conn.channel()
            channel.confirm_delivery()  # every message is in the queue when we return
            for seq in range(start, start + n):
                props = pika.BasicProperties(
                    delivery_mode=2,
                    content_type="application/json",
                    message_id=f"amqp-{seq}",
                    headers={"x-message-id": self.message_id(seq)},
                )
                channel.basic_publish("", queue, self.body(seq), props)

    async def publish(self, queue: str, n: int, start: int = 0) -> None:
        """Publish ``n`` persistent messages the way Waldur does (default exchange)."""
        await asyncio.to_thread(self._publish, queue, n, start)

    def _depth(self, queue: str) -> int:
        with _blocking(self.vhost) as conn:
            return conn.channel().queue_declare(queue, passive=True).method.message_count

    async def depth(self, queue: str) -> int:
        """Ready messages, straight from the broker (a passive declare, no stats lag)."""
        return await asyncio.to_thread(self._depth, queue)

    async def wait_for_queue(self, queue: str, deadline: float = 30.0, **expected: int) -> dict[str, Any]:
        """Poll the management API until the queue's counters equal ``expected``.

        Its statistics refresh every few seconds, so this polls with a deadline."""
        url = f"{MGMT}/queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}"
        info: dict[str, Any] = {}
        stop = time.monotonic() + deadline
        async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
            while time.monotonic() < stop:
                info = (await client.get(url)).json()
                if all(info.get(key) == value for key, value in expected.items()):
                    return info
                await asyncio.sleep(0.5)
        pytest.fail(f"queue {queue}: wanted {expected}, last seen { {k: info.get(k) for k in expected} }")

    @staticmethod
    async def wait_until(condition: Callable[[], bool], deadline: float = 30.0) -> None:
        """Wait for an in-process condition, yielding to the loop between checks."""
        stop = time.monotonic() + deadline
        while not condition():
            if time.monotonic() > stop:
                pytest.fail("condition not reached in time")
            await asyncio.sleep(0.01)

    @staticmethod
    async def take(source: BrokerConnection, n: int, deadline: float = 60.0) -> list[BrokerMessage]:
        """The next ``n`` messages of ``source`` (not acked)."""
        out: list[BrokerMessage] = []
        if n == 0:
            return out
        async with asyncio.timeout(deadline):
            async for msg in source.messages():
                out.append(msg)
                if len(out) == n:
                    break
        return out


@pytest.fixture
def broker(vhost: str) -> Broker:
    return Broker(vhost)


SourceFactory = Callable[..., Awaitable[BrokerConnection]]


@pytest.fixture
async def connect(vhost: str) -> AsyncIterator[SourceFactory]:
    """``await connect(kind, url=None, **options)``: a connected source, closed at the end."""
    opened: list[BrokerConnection] = []

    async def factory(kind: str, url: str | None = None, passcode: str = "guest", **options: Any) -> BrokerConnection:
        source = open_connection(url or URLS[kind], "guest", passcode, vhost, **options)
        opened.append(source)
        await source.connect()
        return source

    yield factory
    for source in opened:
        await source.close()


class Proxy:
    """A TCP relay in front of the broker that can cut or silently freeze connections
    (a black hole, like a peer whose host died), to test failure detection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._transports: list[asyncio.WriteTransport] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, kind: str) -> str:
        return URLS[kind].replace(f":{self.target_port}", f":{self.port}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        self._transports.append(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
            self._transports.append(up_writer.transport)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            pass  # stopped by the test: the handler ends quietly

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.frozen:
                writer.write(data)
                await writer.drain()
        if not self.frozen:
            writer.close()

    def freeze(self) -> None:
        self.frozen = True

    def cut(self) -> None:
        """Reset every relayed connection (both sides), like a crashed broker host."""
        for transport in self._transports:
            transport.abort()
        self._transports.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[str], Awaitable[Proxy]]]:
    proxies: list[Proxy] = []

    async def factory(kind: str) -> Proxy:
        proxy = Proxy(PORTS[kind])
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.stop()

"""Byte transports under the STOMP client: plain TCP (optionally TLS) and WebSocket.

Both push received bytes into a callback (no reader coroutine per frame) and buffer
writes, flushing everything written during one event-loop iteration in a single
send: per-message ACK frames stay individual, but they share syscalls and, over
WebSocket, one WS message (RabbitMQ's web-STOMP parses several frames per message).
Writes are not flow-controlled: what we send is ACK/NACK frames, bounded by the
prefetch window, and heartbeats.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bridges.transports.base import ConnectionLost, TransportTimeout

__all__ = ["ByteTransport", "open_transport"]

DataCallback = Callable[[bytes], None]
LostCallback = Callable[[BaseException | None], None]

DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}


class ByteTransport(Protocol):
    def write(self, data: bytes) -> None:
        """Queue ``data``; it is sent at the end of the current loop iteration."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def close(self, timeout: float) -> None:
        """Flush, close and wait (at most ``timeout``) for the peer to see it."""

    def abort(self) -> None:
        """Drop the connection now, without flushing."""


async def open_transport(
    url: str,
    on_data: DataCallback,
    on_lost: LostCallback,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int | None = None,
) -> ByteTransport:
    """Connect to ``url`` (ws, wss, stomp, stomp+ssl) within ``timeout`` seconds."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    secure = scheme in ("wss", "stomp+ssl")
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            if scheme in ("ws", "wss"):
                return await WsTransport.open(url, on_data, on_lost, ssl_context if secure else None, max_message_size)
            if scheme in ("stomp", "stomp+ssl"):
                host = parts.hostname or "localhost"
                port = parts.port or DEFAULT_PORTS[scheme]
                return await TcpTransport.open(host, port, on_data, on_lost, ssl_context if secure else None)
    except TimeoutError:
        raise TransportTimeout(f"connecting to {_safe_url(url)} timed out after {timeout:g} s") from None
    except (OSError, InvalidHandshake) as exc:
        raise ConnectionLost(f"cannot connect to {_safe_url(url)}: {exc}") from exc
    raise ValueError(f"not a STOMP URL scheme: {scheme!r}")


def _safe_url(url: str) -> str:
    """The URL without any userinfo (which could hold a password)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class _Flusher:
    """Collects writes and flushes them once per loop iteration."""

    __slots__ = ("_loop", "_out", "_scheduled")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _take(self) -> bytes:
        self._scheduled = False
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _flush(self) -> None:
        raise NotImplementedError


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, on_data: DataCallback, on_lost: LostCallback) -> None:
        self.data_received = on_data  # type: ignore[method-assign]  # no extra call per chunk
        self._on_lost = on_lost
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_lost(exc)


class TcpTransport(_Flusher):
    __slots__ = ("_transport", "_protocol")

    def __init__(self, transport: asyncio.Transport, protocol: _TcpProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_data: DataCallback,
        on_lost: LostCallback,
        ssl_context: ssl.SSLContext | None,
    ) -> TcpTransport:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(
            lambda: _TcpProtocol(on_data, on_lost), host, port, ssl=ssl_context
        )
        return cls(transport, protocol)  # type: ignore[arg-type]

    def _flush(self) -> None:
        data = self._take()
        if not self._transport.is_closing():
            self._transport.write(data)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def abort(self) -> None:
        self._out.clear()
        self._transport.abort()

    async def close(self, timeout: float) -> None:
        if self._out:
            self._flush()
        self._transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._protocol.closed)
        except TimeoutError:
            self._transport.abort()


class WsTransport(_Flusher):
    """websockets' asyncio client with a reader task and a writer task.

    websockets' own keepalive pings are off: STOMP heartbeats already detect a dead
    peer, in both directions, and are what RabbitMQ checks. Compression is off too:
    it costs more CPU than it saves on loopback-sized JSON events.
    """

    __slots__ = ("_ws", "_on_data", "_on_lost", "_reader", "_writer", "_wake", "_readable", "_lost")

    def __init__(self, ws: ClientConnection, on_data: DataCallback, on_lost: LostCallback) -> None:
        super().__init__()
        self._ws = ws
        self._on_data = on_data
        self._on_lost = on_lost
        self._wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()
        self._lost = False
        self._reader = asyncio.create_task(self._read_loop(), name="stomp-ws-reader")
        self._writer = asyncio.create_task(self._write_loop(), name="stomp-ws-writer")

    @classmethod
    async def open(
        cls,
        url: str,
        on_data: DataCallback,
        on_lost: LostCallback,
        ssl_context: ssl.SSLContext | None,
        max_message_size: int | None,
    ) -> WsTransport:
        ws = await ws_connect(
            url,
            ssl=ssl_context,
            subprotocols=["v12.stomp"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            open_timeout=None,  # the caller's timeout covers the whole open
            max_size=max_message_size,
            proxy=None,
        )
        return cls(ws, on_data, on_lost)

    def write(self, data: bytes) -> None:
        # The writer task runs after the current callbacks: that is the coalescing.
        self._out.append(data)
        self._wake.set()

    async def _read_loop(self) -> None:
        ws, on_data, readable = self._ws, self._on_data, self._readable
        exc: BaseException | None = None
        try:
            while True:
                if not readable.is_set():
                    await readable.wait()
                # decode=False: bytes even for text messages, no UTF-8 round trip.
                on_data(await ws.recv(decode=False))
        except ConnectionClosed as closed:
            exc = closed if closed.rcvd is None or closed.rcvd.code != 1000 else None
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # the callback failed: surface it, don't hide it
            exc = error
        finally:
            self._lost_once(exc)

    async def _write_loop(self) -> None:
        ws, wake = self._ws, self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                if self._out:
                    await ws.send(self._take())
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._lost_once(error)

    def _lost_once(self, exc: BaseException | None) -> None:
        """Report the loss once and end the other loop: a writer left waiting on a transport
        nobody references any more is destroyed pending ("Task was destroyed but it is
        pending! stomp-ws-writer", once per connection web-STOMP refused)."""
        self._cancel_loops()
        if not self._lost:
            self._lost = True
            self._on_lost(exc)

    def _cancel_loops(self) -> None:
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not current:  # the reader ends by itself after its loss callback
                task.cancel()

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    def abort(self) -> None:
        self._out.clear()
        self._cancel_loops()
        if self._ws.transport is not None:
            self._ws.transport.abort()
        self._lost = True  # the caller asked for it: no loss callback

    async def close(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                if self._out:
                    await self._ws.send(self._take())
                await self._ws.close()
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            for task in (self._writer, self._reader):
                task.cancel()
            await asyncio.gather(self._writer, self._reader, return_exceptions=True)
            if self._ws.transport is not None:
                self._ws.transport.abort()
            self._lost_once(None)

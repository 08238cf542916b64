"""AMQP 0-9-1 consumer (pika) with manual acks, delivering :class:`BrokerMessage`.

Why pika's ``AsyncioConnection`` and not a ``BlockingConnection`` in a thread: the
adapter runs pika's I/O on the bridge's own event loop, so a delivery reaches the
consumer and its ack reaches pika without a thread hop (no ``call_soon_threadsafe``
self-pipe write per message, no ``add_callback_threadsafe`` per ack, no GIL ping-pong
between two busy threads). Acks are thread-safe by construction: pika is only ever
touched from the loop thread, because ``ack``/``nack`` are coroutines of that loop.

Acks are coalesced like the STOMP transport's writes: ``ack`` records the delivery tag
and, once per loop iteration, the longest run of acked tags at the front of the
channel's unacked deliveries goes out as one ``basic.ack(multiple=True)`` (pika sends
every frame with its own ``send`` syscall, and RabbitMQ settles a run in one step).
Tags acked out of order, behind a delivery not acked yet, go out individually: a
multiple ack never covers a message that was not acked.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions as pex
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from bridges.transports.base import (
    AuthenticationError,
    BrokerError,
    BrokerMessage,
    ConnectionLost,
    Inbox,
    QueueNotFound,
    Secret,
    TransportError,
    TransportTimeout,
    iterate,
)

__all__ = ["AmqpConnection", "amqp_headers"]

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}

# AMQP properties under the header names RabbitMQ's STOMP adapter gives them, so a
# message looks the same whichever transport carried it.
_PROPERTY_NAMES = (
    ("content_type", "content-type"),
    ("content_encoding", "content-encoding"),
    ("priority", "priority"),
    ("correlation_id", "correlation-id"),
    ("reply_to", "reply-to"),
    ("expiration", "expiration"),
    ("message_id", "amqp-message-id"),
    ("timestamp", "timestamp"),
    ("type", "type"),
    ("user_id", "user-id"),
    ("app_id", "app-id"),
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def amqp_headers(props: BasicProperties) -> dict[str, str]:
    """Application headers plus the set properties, as text (STOMP naming)."""
    headers = {key: _text(value) for key, value in props.headers.items()} if props.headers else {}
    for attr, name in _PROPERTY_NAMES:
        value = getattr(props, attr)
        if value is not None:
            headers[name] = _text(value)
    if props.delivery_mode is not None:
        headers["persistent"] = "true" if props.delivery_mode == 2 else "false"
    return headers


class AmqpConnection:
    """One AMQP connection and channel; ``subscribe`` adds a consumer per queue."""

    def __init__(
        self,
        url: str,
        login: str,
        passcode: str,
        vhost: str = "/",
        *,
        heartbeat: float = 10.0,
        connect_timeout: float = 10.0,
        receipt_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"not an AMQP URL scheme: {scheme!r}")
        self.url = url
        self.login = login
        self.vhost = vhost
        self._passcode = Secret(passcode)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or DEFAULT_PORTS[scheme]
        if scheme == "amqps" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl_context = ssl_context if scheme == "amqps" else None
        self._heartbeat = max(1, round(heartbeat))
        self._connect_timeout = connect_timeout
        self._op_timeout = receipt_timeout

        self._epoch = 0
        self._conn: AsyncioConnection | None = None
        self._channel: Channel | None = None
        self._inbox = Inbox()
        self._queues: dict[str, str] = {}  # consumer tag -> queue
        self._subscribing = ""  # the queue being declared or consumed (named in its refusal)
        self._pending: set[asyncio.Future[Any]] = set()
        self._failure: TransportError | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        # Ack coalescing: delivery tags in delivery order not yet settled on the wire,
        # tags acked since the last flush, and tags settled individually (out of order
        # acks, nacks) that are still somewhere in ``_unsettled``. A delivery never acked
        # nor nacked keeps every later tag in ``_unsettled``: the bridge settles each one
        # or drops the connection (prefetch bounds how many are open at a time).
        self._unsettled: collections.deque[int] = collections.deque()
        self._to_ack: set[int] = set()
        self._settled: set[int] = set()
        self._ack_scheduled = False

    def __repr__(self) -> str:
        state = "failed" if self._failure else "open" if self._channel else "closed"
        return f"<AmqpConnection {self._host}:{self._port} login={self.login!r} vhost={self.vhost!r} {state}>"

    # -- public API -----------------------------------------------------------------

    async def connect(self) -> None:
        if self._conn is not None:
            raise RuntimeError("already connected; close() first")
        self._reset()
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = self._future()
        self._closed = loop.create_future()
        params = pika.ConnectionParameters(
            host=self._host,
            port=self._port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.login, self._passcode.reveal(), erase_on_connect=True),
            heartbeat=self._heartbeat,
            ssl_options=pika.SSLOptions(self._ssl_context, self._host) if self._ssl_context else None,
            socket_timeout=self._connect_timeout,
            stack_timeout=self._connect_timeout,
            connection_attempts=1,  # retrying is the bridge's job
        )
        self._conn = AsyncioConnection(
            params,
            on_open_callback=lambda conn: conn.channel(on_open_callback=lambda ch: _resolve(opened, ch)),
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=loop,
        )
        try:
            channel = await self._wait(opened, self._connect_timeout, "connecting")
        except BaseException:  # failed, timed out or cancelled: leave no socket behind
            self._abort()
            raise
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        self._channel = channel
        log.info("AMQP connected to %s:%d vhost %r", self._host, self._port, self.vhost)

    async def subscribe(self, queue: str, prefetch: int) -> str:
        """Consume ``queue`` with manual acks and at most ``prefetch`` unacked messages
        (0: unbounded). The queue is only declared passively: Waldur owns its queues and
        their arguments. Returns the consumer tag."""
        channel = self._live()
        self._subscribing = queue
        try:
            declared: asyncio.Future[Any] = self._future()
            channel.queue_declare(queue, passive=True, callback=lambda frame: _resolve(declared, frame))
            await self._wait(declared, self._op_timeout, f"declaring {queue}")
            qos: asyncio.Future[Any] = self._future()
            channel.basic_qos(prefetch_count=prefetch, callback=lambda frame: _resolve(qos, frame))
            await self._wait(qos, self._op_timeout, "basic.qos")
            consumed: asyncio.Future[Any] = self._future()
            tag = channel.basic_consume(
                queue, self._on_message, auto_ack=False, callback=lambda frame: _resolve(consumed, frame)
            )
            self._queues[tag] = queue
            await self._wait(consumed, self._op_timeout, f"consuming {queue}")
        finally:
            self._subscribing = ""
        return tag

    def messages(self) -> AsyncIterator[BrokerMessage]:
        return iterate(self._inbox)

    async def ack(self, msg: BrokerMessage) -> None:
        """Acknowledge ``msg``; sent at the end of the current loop iteration (before
        any later ``nack`` or ``close``)."""
        self._live_for(msg)
        self._to_ack.add(int(msg.ack_id))
        self._schedule_acks()

    async def ack_many(self, msgs: list[BrokerMessage]) -> None:
        """Acknowledge each of ``msgs``, as ``ack`` does."""
        for msg in msgs:
            self._live_for(msg)
        self._to_ack.update([int(msg.ack_id) for msg in msgs])
        self._schedule_acks()

    async def nack(self, msg: BrokerMessage) -> None:
        """Reject ``msg`` back to its queue."""
        channel = self._live_for(msg)
        self._flush_acks(self._epoch)
        tag = int(msg.ack_id)
        channel.basic_nack(tag, requeue=True)
        self._settled.add(tag)

    async def close(self) -> None:
        """Close channel and connection (pending acks are sent first; unacked messages
        go back to their queues). Safe to call in any state."""
        conn = self._conn
        if conn is None:
            return
        self._flush_acks(self._epoch)
        self._closing = True
        try:
            if not (conn.is_closed or conn.is_closing):
                conn.close()
            if self._closed is not None:
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        await asyncio.shield(self._closed)
                except TimeoutError:
                    log.info("AMQP %s: close not confirmed in time", self)
        finally:
            self._abort()
            self._inbox.close()

    async def __aenter__(self) -> AmqpConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- callbacks from pika (on the loop thread) -----------------------------------

    def _on_message(self, channel: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        tag = method.consumer_tag
        queue = self._queues.get(tag, "")
        self._unsettled.append(method.delivery_tag)
        self._inbox.put(
            BrokerMessage(
                queue,
                body,
                amqp_headers(props),
                str(method.delivery_tag),
                tag,
                queue,
                f"{tag}@@{method.delivery_tag}",
                method.redelivered,
                self._epoch,
            )
        )

    def _on_open_error(self, conn: AsyncioConnection, exc: BaseException) -> None:
        try:
            error = self._connect_error(exc)
        except Exception:  # noqa: BLE001 - never leave connect() waiting for its timeout
            error = ConnectionLost(f"cannot connect to {self._host}:{self._port}: {type(exc).__name__}")
        self._fail(error)

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer (``basic.cancel``): its queue was deleted. Without
        this the channel stays open consuming nothing, a silent stall (measured: 186 of 186
        later events lost, /health/ready "connected"). The connection fails with
        :class:`QueueNotFound`, so the bridge re-registers, which re-creates the queue."""
        queue = self._queues.get(frame.method.consumer_tag, "")
        if self._closing:
            return
        self._fail(QueueNotFound(f"broker cancelled the consumer of {queue or 'a queue'}",
                                 "basic.cancel: the queue was deleted", queue=queue))
        conn = self._conn
        if conn is not None and not (conn.is_closed or conn.is_closing):
            conn.close()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        self._channel = None
        if self._closing:
            return
        self._fail(_close_error(reason, "channel closed", self._subscribing))
        conn = self._conn
        if conn is not None and not (conn.is_closed or conn.is_closing):
            conn.close()

    def _on_connection_closed(self, conn: AsyncioConnection, reason: BaseException) -> None:
        self._channel = None
        if conn is self._conn:
            self._conn = None  # gone: connect() may open a new one
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if not self._closing:
            self._fail(_close_error(reason, "connection lost"))

    # -- acks -----------------------------------------------------------------------

    def _schedule_acks(self) -> None:
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks, self._epoch)

    def _flush_acks(self, epoch: int) -> None:
        """Send the acks gathered since the last flush (see the module docstring)."""
        if epoch != self._epoch:
            return  # scheduled by an earlier connection: its acks died with it
        self._ack_scheduled = False
        to_ack = self._to_ack
        if not to_ack:
            return
        channel = self._channel
        if channel is None or self._failure is not None:
            to_ack.clear()  # the channel is gone: the broker redelivers these
            return
        unsettled, settled = self._unsettled, self._settled
        last = None
        while unsettled:
            tag = unsettled[0]
            if tag in to_ack:
                to_ack.discard(tag)
                last = tag
            elif tag in settled:
                settled.discard(tag)
            else:
                break
            unsettled.popleft()
        if last is not None:
            channel.basic_ack(last, multiple=True)
        for tag in sorted(to_ack):
            channel.basic_ack(tag)
        settled.update(to_ack)
        to_ack.clear()

    # -- state ----------------------------------------------------------------------

    def _reset(self) -> None:
        self._epoch += 1
        self._unsettled.clear()
        self._to_ack.clear()
        self._settled.clear()
        self._ack_scheduled = False
        self._inbox.reset()
        self._queues.clear()
        self._failure = None
        self._closing = False

    def _future(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def _wait(self, fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            self._fail(TransportTimeout(f"{what} on {self._host}:{self._port} timed out after {timeout:g} s"))
            self._abort()
            raise self._failure from None  # type: ignore[misc]

    def _fail(self, exc: TransportError) -> None:
        if self._failure is not None:
            return
        self._failure = exc
        self._inbox.fail(exc)
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: the waiter re-raises it
        if not self._closing:
            log.warning("AMQP %s failed: %s", self, exc)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = None
        if conn is not None and not conn.is_closed:
            try:
                # pika has no public abort: close the socket under it.
                conn._adapter_disconnect_stream()
            except Exception:  # noqa: BLE001 - already broken; nothing left to save
                log.debug("AMQP abort of %s failed", self, exc_info=True)

    def _live(self) -> Channel:
        if self._failure is not None:
            raise self._failure
        if self._channel is None or self._closing:
            raise ConnectionLost("not connected")
        return self._channel

    def _live_for(self, msg: BrokerMessage) -> Channel:
        channel = self._live()
        if msg.epoch != self._epoch:
            raise ConnectionLost("message from an earlier connection; the broker redelivers it")
        return channel

    def _connect_error(self, exc: BaseException) -> TransportError:
        where = f"{self._host}:{self._port} vhost {self.vhost!r}"
        if isinstance(exc, pex.ProbableAuthenticationError | pex.AuthenticationError):
            text = self._passcode.scrub(str(exc))
            return AuthenticationError(f"broker refused the credentials of {self.login!r} at {where}", text)
        if isinstance(exc, pex.ProbableAccessDeniedError):
            text = self._passcode.scrub(str(exc))
            return AuthenticationError(f"broker denied {self.login!r} access to {where}", text)
        cause = _root_cause(exc)
        text = self._passcode.scrub(f"{type(cause).__name__}: {cause}")
        if isinstance(cause, TimeoutError | AMQPConnectorStackTimeout):
            return TransportTimeout(f"connecting to {where} timed out: {text}")
        return ConnectionLost(f"cannot connect to {where}: {text}")


def _root_cause(exc: BaseException) -> BaseException:
    """The socket or handshake error inside pika's connection-workflow wrappers."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    attempts = getattr(inner, "exceptions", None)
    if attempts:
        inner = attempts[-1]
    return getattr(inner, "exception", None) or inner


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _close_error(reason: BaseException, what: str, queue: str = "") -> TransportError:
    """Map pika's close reasons (reply code + text) to our exceptions (``queue``: the one
    being declared or consumed, if any)."""
    code = getattr(reason, "reply_code", 0)
    text = getattr(reason, "reply_text", "") or str(reason)
    if code == 404:
        return QueueNotFound(f"{what}: {text}", str(code), queue=queue)
    if code in (403, 530):
        return AuthenticationError(f"{what}: {text}", str(code))
    if code in (320, 0) or isinstance(reason, pex.StreamLostError | pex.ConnectionClosedByClient):
        return ConnectionLost(f"{what}: {text}")
    return BrokerError(f"{what}: {text}", str(code))

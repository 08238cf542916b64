"""A lean asyncio STOMP 1.2 consumer for RabbitMQ (TCP or WebSocket underneath).

Received bytes are parsed in the transport's callback and MESSAGE frames go straight
into an :class:`~bridges.transports.base.Inbox`; no task or future per message. ACK/NACK frames
are individual (client-individual mode) but buffered and flushed once per loop
iteration by the transport.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from bridges.transports.base import (
    AuthenticationError,
    BrokerError,
    BrokerMessage,
    ConnectionLost,
    Inbox,
    ProtocolError,
    QueueNotFound,
    Secret,
    TransportError,
    TransportTimeout,
    SubscriptionRefused,
    iterate,
)
from bridges.transports.stomp.frames import DEFAULT_MAX_FRAME_SIZE, Frame, FrameParser, encode_frame, escape
from bridges.transports.stomp.sockets import ByteTransport, _safe_url, open_transport

__all__ = ["StompConnection"]

log = logging.getLogger(__name__)

# Words in RabbitMQ's ERROR frames that mean "your credentials or permissions".
_AUTH_WORDS = ("access refused", "access_refused", "access denied", "not authori", "authenticat", "login")
_NOT_FOUND_WORDS = ("not_found", "no queue")
# RabbitMQ's ERROR frame when a subscribed queue is deleted (measured, 3.10 over ws:// and
# stomp://): "Server cancelled subscription", body naming "id='sub-1'". The queue is gone:
# QueueNotFound, so the bridge re-registers at once instead of reconnecting into a refusal.
_CANCELLED_WORDS = ("cancelled subscription", "canceled a subscription")
_SUBSCRIPTION_ID = re.compile(r"id='([^']*)'")
# Heartbeat slack: the spec leaves it open; 2.5 intervals survive one late beat and a GC pause.
_RX_GRACE = 2.5
# Stop reading from the socket when this many messages wait for the consumer.
_HIGH_WATER = 10_000


class StompConnection:
    """One STOMP connection: ``connect``, ``subscribe`` queues, iterate ``messages``."""

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
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("ws", "wss", "stomp", "stomp+ssl"):
            raise ValueError(f"not a STOMP URL: {_safe_url(url)}")
        self.url = url
        self.login = login
        self.vhost = vhost
        self._passcode = Secret(passcode)
        self._heartbeat_ms = int(heartbeat * 1000)
        self._connect_timeout = connect_timeout
        self._receipt_timeout = receipt_timeout
        self._ssl_context = ssl_context
        self._max_frame_size = max_frame_size

        self._epoch = 0
        self._transport: ByteTransport | None = None
        self._parser = FrameParser(max_frame_size=max_frame_size)
        self._inbox = Inbox(_HIGH_WATER, self._on_pressure)
        self._connected: asyncio.Future[Frame] | None = None
        self._receipts: dict[str, asyncio.Future[None]] = {}
        self._subs: dict[str, str] = {}  # subscription id -> queue
        self._ids = itertools.count(1)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._failure: TransportError | None = None
        self._closing = False
        self._disconnecting: asyncio.Future[None] | None = None
        self._subscribing: str | None = None  # queue whose SUBSCRIBE awaits its receipt
        self._reading_paused = False
        self._last_rx = 0.0
        self.server: str = ""  # the CONNECTED frame's server header, for health reports

    def __repr__(self) -> str:
        state = "failed" if self._failure else "open" if self._transport else "closed"
        return f"<StompConnection {_safe_url(self.url)} login={self.login!r} vhost={self.vhost!r} {state}>"

    # -- public API -----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the transport, send CONNECT and wait for CONNECTED (all with timeouts).

        Raises :class:`AuthenticationError` on rejected credentials, :class:`TransportTimeout`
        or :class:`ConnectionLost` if the broker is unreachable.
        """
        if self._transport is not None:
            raise RuntimeError("already connected; close() first")
        hb = f"{self._heartbeat_ms},{self._heartbeat_ms}"
        headers = {"accept-version": "1.2", "host": self.vhost, "login": self.login, "heart-beat": hb}
        headers["passcode"] = self._passcode.reveal()
        connect_frame = encode_frame("CONNECT", headers)  # a bad value fails before any I/O
        self._reset()
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._transport = await open_transport(
            self.url,
            self._on_data,
            self._on_lost,
            timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
            max_message_size=self._max_frame_size,
        )
        self._last_rx = loop.time()
        self._transport.write(connect_frame)
        try:
            async with asyncio.timeout(self._connect_timeout):
                frame = await self._connected
        except TimeoutError:
            self._fail(TransportTimeout(f"no CONNECTED from {_safe_url(self.url)} within {self._connect_timeout:g} s"))
        except TransportError:
            pass
        except asyncio.CancelledError:
            self._abort()
            raise
        if self._failure is not None:
            self._abort()
            raise self._failure
        try:
            self._on_connected(frame)
        except ProtocolError as exc:
            self._fail(exc)
            self._abort()
            raise

    async def subscribe(self, queue: str, prefetch: int, *, destination: str | None = None) -> str:
        """Subscribe to ``queue`` (``/amq/queue/<queue>``: never redeclares it) with
        client-individual acks and at most ``prefetch`` unacked messages (0: unbounded).
        Waits for the broker's receipt; returns the subscription id."""
        transport = self._live()
        sub_id = f"sub-{next(self._ids)}"
        headers = {
            "id": sub_id,
            "destination": destination or f"/amq/queue/{queue}",
            "ack": "client-individual",
        }
        if prefetch > 0:
            headers["prefetch-count"] = str(prefetch)
        self._subs[sub_id] = queue
        receipt = self._expect_receipt(headers)
        transport.write(encode_frame("SUBSCRIBE", headers))
        self._subscribing = queue
        try:
            await self._await_receipt(receipt, f"SUBSCRIBE {queue}")
        finally:
            self._subscribing = None
        return sub_id

    async def unsubscribe(self, sub_id: str) -> None:
        transport = self._live()
        headers = {"id": sub_id}
        receipt = self._expect_receipt(headers)
        transport.write(encode_frame("UNSUBSCRIBE", headers))
        await self._await_receipt(receipt, f"UNSUBSCRIBE {sub_id}")
        self._subs.pop(sub_id, None)

    def messages(self) -> AsyncIterator[BrokerMessage]:
        """Deliveries in broker order; ends after ``close()``, raises when the
        connection fails (buffered messages are dropped: the broker redelivers them)."""
        return iterate(self._inbox)

    async def ack(self, msg: BrokerMessage) -> None:
        self._live_for(msg).write(_ack_frame(msg.ack_id))

    async def ack_many(self, msgs: list[BrokerMessage]) -> None:
        """One ACK frame per message (client-individual), written together."""
        if msgs:
            transport = self._live()
            for msg in msgs:
                self._live_for(msg)
            transport.write(b"".join([_ack_frame(msg.ack_id) for msg in msgs]))

    async def nack(self, msg: BrokerMessage) -> None:
        """Reject ``msg``; RabbitMQ requeues it."""
        self._live_for(msg).write(b"NACK\nid:%s\n\n\x00" % escape(msg.ack_id).encode())

    async def close(self) -> None:
        """DISCONNECT with a receipt (so every ACK written before is processed), then close.
        Unacked messages go back to the queue. Safe to call in any state."""
        transport = self._transport
        if transport is None:
            return
        self._closing = True
        if self._reading_paused:
            transport.resume_reading()  # or the DISCONNECT receipt would never be read
        try:
            if self._failure is None:
                headers: dict[str, str] = {}
                receipt = self._disconnecting = self._expect_receipt(headers)
                transport.write(encode_frame("DISCONNECT", headers))
                try:
                    await self._await_receipt(receipt, "DISCONNECT")
                except TransportError as exc:
                    log.info("STOMP %s: DISCONNECT not confirmed: %s", self, exc)
            await transport.close(self._connect_timeout)
        finally:
            self._stop_heartbeat()
            self._inbox.close()
            self._transport = None

    async def __aenter__(self) -> StompConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- connection state -----------------------------------------------------------

    def _reset(self) -> None:
        self._epoch += 1
        self._parser = FrameParser(max_frame_size=self._max_frame_size)
        self._inbox.reset()
        self._receipts.clear()
        self._subs.clear()
        self._failure = None
        self._closing = False
        self._disconnecting = None
        self._reading_paused = False

    def _live(self) -> ByteTransport:
        if self._failure is not None:
            raise self._failure
        if self._transport is None or self._closing:
            raise ConnectionLost("not connected")
        return self._transport

    def _live_for(self, msg: BrokerMessage) -> ByteTransport:
        transport = self._live()
        if msg.epoch != self._epoch:
            raise ConnectionLost("message from an earlier connection; the broker redelivers it")
        return transport

    def _on_connected(self, frame: Frame) -> None:
        version = frame.headers.get("version", "1.0")
        if version != "1.2":
            raise ProtocolError(f"broker speaks STOMP {version}, not 1.2")
        self.server = frame.headers.get("server", "")
        send_ms, recv_ms = _negotiate(self._heartbeat_ms, frame.headers.get("heart-beat", "0,0"))
        if send_ms or recv_ms:
            self._heartbeat_task = asyncio.create_task(
                self._heartbeat(send_ms / 1000, recv_ms / 1000), name=f"stomp-heartbeat-{self.login}"
            )
        log.info("STOMP connected to %s (%s) heart-beat send %d ms, expect %d ms", _safe_url(self.url), self.server, send_ms, recv_ms)

    def _fail(self, exc: TransportError) -> None:
        """Record the first failure and wake everyone waiting on this connection."""
        if self._failure is not None:
            return
        self._failure = exc
        self._inbox.fail(exc)
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(exc)
            self._connected.exception()  # retrieved: connect() reads _failure instead
        for fut in self._receipts.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._receipts.clear()
        self._stop_heartbeat()
        if not self._closing:
            log.warning("STOMP %s failed: %s", self, exc)

    def _abort(self) -> None:
        transport, self._transport = self._transport, None
        self._stop_heartbeat()
        if transport is not None:
            transport.abort()

    def _stop_heartbeat(self) -> None:
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- receipts -------------------------------------------------------------------

    def _expect_receipt(self, headers: dict[str, str]) -> asyncio.Future[None]:
        receipt_id = f"r-{next(self._ids)}"
        headers["receipt"] = receipt_id
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[receipt_id] = fut
        return fut

    async def _await_receipt(self, fut: asyncio.Future[None], what: str) -> None:
        try:
            async with asyncio.timeout(self._receipt_timeout):
                await fut
        except TimeoutError:
            exc = TransportTimeout(f"no RECEIPT for {what} within {self._receipt_timeout:g} s")
            self._fail(exc)
            self._abort()
            raise exc from None

    # -- transport callbacks (hot path) ---------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            self._abort()
            return
        put, subs, epoch = self._inbox.put, self._subs, self._epoch
        for frame in frames:
            if frame.command == "MESSAGE":
                h = frame.headers
                sub = h.get("subscription", "")
                put(
                    BrokerMessage(
                        subs.get(sub, ""),
                        frame.body,
                        h,
                        h.get("ack", ""),
                        sub,
                        h.get("destination", ""),
                        h.get("message-id", ""),
                        h.get("redelivered") == "true",
                        epoch,
                    )
                )
            else:
                self._on_control(frame)
                if self._failure is not None:
                    return  # an ERROR ends the connection: ignore whatever follows it

    def _on_control(self, frame: Frame) -> None:
        command = frame.command
        if command == "RECEIPT":
            fut = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif command == "CONNECTED":
            if self._connected is not None and not self._connected.done():
                self._connected.set_result(frame)
        elif command == "ERROR":
            connected = self._connected is not None and self._connected.done()
            self._fail(_broker_error(frame, self._passcode, connected, self._queue_of(frame)))
            self._abort()
        else:
            self._fail(ProtocolError(f"unexpected {command} frame from the broker"))
            self._abort()

    def _queue_of(self, frame: Frame) -> str:
        """The queue an ERROR frame is about: the one being subscribed, or the one whose
        subscription id it names (a cancelled subscription)."""
        if self._subscribing is not None:
            return self._subscribing
        found = _SUBSCRIPTION_ID.search(frame.body.decode("utf-8", "replace"))
        return self._subs.get(found.group(1), "") if found else ""

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._closing and exc is None and self._disconnecting is not None:
            # RabbitMQ's web-STOMP answers DISCONNECT with a clean close (1000) and no
            # RECEIPT; it processed every frame before the DISCONNECT, so it counts.
            if not self._disconnecting.done():
                self._disconnecting.set_result(None)
            return
        if self._closing or self._failure is not None:
            return
        if exc is None and self._subscribing is not None:
            self._fail(
                SubscriptionRefused(
                    f"broker closed the connection in answer to SUBSCRIBE {self._subscribing}",
                    "web-STOMP does this, without an ERROR frame, when the queue does not exist or is not readable",
                    queue=self._subscribing,
                )
            )
        detail = f": {exc}" if exc else ""
        self._fail(ConnectionLost(f"connection to {_safe_url(self.url)} lost{detail}"))
        self._abort()  # the transport's own tasks end with it (close() finds nothing to do)

    def _on_pressure(self, high: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        self._reading_paused = high
        if high:
            transport.pause_reading()
        else:
            self._last_rx = asyncio.get_running_loop().time()
            transport.resume_reading()

    # -- heartbeats -----------------------------------------------------------------

    async def _heartbeat(self, send_every: float, expect_every: float) -> None:
        """Send EOLs and watch for the broker's; fail the connection when it goes quiet.

        We send at half the negotiated interval (an EOL costs nothing and the broker
        then never sees us late); silence longer than 2.5 intervals means a dead peer.
        """
        loop = asyncio.get_running_loop()
        intervals = [x for x in (send_every / 2, expect_every / 2) if x > 0]
        tick = min(intervals)
        next_send = loop.time() + send_every / 2
        while self._transport is not None and self._failure is None:
            await asyncio.sleep(tick)
            now = loop.time()
            if send_every and now >= next_send:
                self._transport.write(b"\n")
                next_send = now + send_every / 2
            if expect_every and not self._reading_paused and now - self._last_rx > _RX_GRACE * expect_every:
                self._fail(ConnectionLost(f"no data from the broker for {now - self._last_rx:.1f} s (heart-beat missed)"))
                self._abort()


def _ack_frame(ack_id: str) -> bytes:
    return b"ACK\nid:%s\n\n\x00" % escape(ack_id).encode()


def _negotiate(ours_ms: int, theirs: str) -> tuple[int, int]:
    """(send, expect) intervals in ms from our cx,cy and the server's sx,sy."""
    try:
        sx, sy = (int(x) for x in theirs.split(","))
    except ValueError:
        raise ProtocolError(f"invalid heart-beat header {theirs[:32]!r}") from None
    send = max(ours_ms, sy) if ours_ms and sy else 0
    expect = max(ours_ms, sx) if ours_ms and sx else 0
    return send, expect


def _broker_error(frame: Frame, passcode: Secret, connected: bool, queue: str = "") -> BrokerError:
    """A typed exception for an ERROR frame (``queue``: the queue it is about, if known);
    never carries the passcode."""
    message = passcode.scrub(frame.headers.get("message", "ERROR"))
    details = passcode.scrub(frame.body.decode("utf-8", "replace").strip())
    text = f"{message} {details}".lower()
    cls: type[BrokerError] = BrokerError
    if any(word in text for word in _AUTH_WORDS):
        cls = AuthenticationError
    elif any(word in text for word in _NOT_FOUND_WORDS + _CANCELLED_WORDS):
        cls = QueueNotFound
    prefix = "broker refused the connection" if not connected else "broker error"
    if cls is QueueNotFound:
        return QueueNotFound(f"{prefix}: {message}", details, queue=queue)
    return cls(f"{prefix}: {message}", details)

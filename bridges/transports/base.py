"""The interface every broker transport exposes to the bridge, and the transports' error tree.

A :class:`BrokerConnection` is one broker connection under one credential. The bridge
owns the reconnect/backoff policy: a connection only has to fail promptly and clearly
(:class:`ConnectionLost`, :class:`AuthenticationError`, ...) so the bridge can decide.
Each transport maps its library's failures onto this tree, rooted in
``streams.errors.UsyncError``::

    TransportError
    ├── ConnectionLost          the broker went away: reconnect (transient)
    │   ├── TransportTimeout    connect, handshake or receipt too slow
    │   └── ProtocolError       bytes that are not the protocol
    └── BrokerError             the broker refused something
        ├── AuthenticationError credentials rejected: re-register, back off slowly
        └── SubscriptionRefused may not (or no longer) consume the queue: re-register now
            └── QueueNotFound   the queue does not exist (deleted, or consumer cancelled)

One connection object covers one connection lifetime at a time. Messages carry the
*epoch* of the connection that delivered them: acking a message from an earlier
connection is refused with :class:`ConnectionLost`, because the broker has already
requeued it and will redeliver it (at-least-once), and an AMQP delivery tag from a
dead channel would close the new channel.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

import msgspec

from streams.contract.config import Secret
from streams.errors import TransientError, UsyncError

__all__ = [
    "AuthenticationError",
    "BrokerError",
    "BrokerMessage",
    "ConnectionLost",
    "Inbox",
    "ProtocolError",
    "QueueNotFound",
    "Secret",
    "BrokerConnection",
    "TransportError",
    "TransportTimeout",
    "SubscriptionRefused",
    "iterate",
]


class BrokerMessage(msgspec.Struct, frozen=True, gc=False):
    """One delivery, identical in shape for STOMP and AMQP.

    ``headers`` uses RabbitMQ's STOMP names for AMQP properties too (``content-type``,
    ``persistent``, ``amqp-message-id``, ``x-message-id``, ...), so the envelope and the
    event id do not depend on the transport the message arrived by.
    """

    queue: str
    body: bytes
    headers: dict[str, str]
    ack_id: str  # STOMP ``ack`` header; AMQP delivery tag as text
    subscription: str  # STOMP subscription id; AMQP consumer tag
    destination: str  # ``/amq/queue/<queue>`` for STOMP, the queue name for AMQP
    message_id: str  # the broker's per-delivery id (STOMP ``message-id``)
    redelivered: bool
    epoch: int  # which connection of the source delivered it


class TransportError(UsyncError):
    """Base class of every transport failure."""


class ConnectionLost(TransportError, TransientError):
    """The broker went away (closed, reset, heartbeat missed); reconnect."""


class TransportTimeout(ConnectionLost, TimeoutError):
    """A network operation (connect, handshake, receipt) did not finish in time."""


class ProtocolError(ConnectionLost):
    """The peer sent bytes that are not the protocol; the connection is unusable."""


class BrokerError(TransportError):
    """The broker refused something (STOMP ERROR frame, AMQP connection/channel close)."""

    def __init__(self, message: str, details: str = "") -> None:
        self.message = message
        self.details = details
        super().__init__(f"{message}: {details}" if details else message)


class AuthenticationError(BrokerError):
    """Credentials rejected: re-register or back off more slowly than for outages."""


class SubscriptionRefused(BrokerError):
    """The broker would not let us consume a queue (``queue``, when known), or stopped
    letting us: the bridge re-registers through the Waldur API at once, which re-creates
    the queue (Waldur's ``create_queue`` is idempotent).

    RabbitMQ's web-STOMP closes the connection without an ERROR frame when the queue is
    missing or not readable, so over WebSocket this is all we can know."""

    def __init__(self, message: str, details: str = "", queue: str = "") -> None:
        self.queue = queue
        super().__init__(message, details)


class QueueNotFound(SubscriptionRefused):
    """The queue does not exist (never redeclared: Waldur owns its queues)."""


@runtime_checkable
class BrokerConnection(Protocol):
    """What the bridge needs from a broker transport."""

    async def connect(self) -> None: ...

    async def subscribe(self, queue: str, prefetch: int) -> str: ...

    def messages(self) -> AsyncIterator[BrokerMessage]: ...

    async def ack(self, msg: BrokerMessage) -> None: ...

    async def ack_many(self, msgs: list[BrokerMessage]) -> None:
        """Acknowledge each of ``msgs`` (individually, as ``ack`` would), in order."""
        ...

    async def nack(self, msg: BrokerMessage) -> None: ...

    async def close(self) -> None: ...


class Inbox:
    """Deliveries waiting for the consumer, and the failure that ends them.

    A deque and one waiter future instead of an asyncio.Queue: ``put`` is called once per
    message on the hot path and the consumer usually finds the next message already there.
    Once failed, buffered messages are dropped: they can no longer be acked and the broker
    will redeliver them. ``on_pressure(True)`` is called when ``high_water`` messages are
    waiting (so the transport can stop reading) and ``on_pressure(False)`` once half of
    them have been taken.
    """

    __slots__ = ("_items", "_waiter", "_failure", "_closed", "_high", "_on_pressure", "_paused")

    def __init__(
        self,
        high_water: int = 0,
        on_pressure: Callable[[bool], None] | None = None,
    ) -> None:
        self._items: collections.deque[BrokerMessage] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._high = high_water if on_pressure is not None else 0
        self._on_pressure = on_pressure
        self._paused = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, msg: BrokerMessage) -> None:
        items = self._items
        items.append(msg)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._high and len(items) >= self._high and not self._paused:
            self._paused = True
            self._on_pressure(True)  # type: ignore[misc]

    def fail(self, exc: BaseException) -> None:
        """End the stream with ``exc`` (first failure wins)."""
        if self._failure is None and not self._closed:
            self._failure = exc
        self._end()

    def close(self) -> None:
        """End the stream without an error (a graceful close, whatever happened first)."""
        self._closed = True
        self._failure = None
        self._end()

    def _end(self) -> None:
        self._items.clear()
        self._paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reset(self) -> None:
        """Start a new connection's stream."""
        self._items.clear()
        self._failure = None
        self._closed = False
        self._paused = False

    async def get(self) -> BrokerMessage | None:
        """The next message; ``None`` once closed; raises the failure once failed."""
        items = self._items
        while True:
            if self._failure is not None:
                raise self._failure
            if items:
                msg = items.popleft()
                if self._paused and len(items) <= self._high // 2:
                    self._paused = False
                    self._on_pressure(False)  # type: ignore[misc]
                return msg
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


async def iterate(inbox: Inbox) -> AsyncIterator[BrokerMessage]:
    """``inbox`` as an async iterator that ends on close and raises on failure."""
    get = inbox.get
    while True:
        msg = await get()
        if msg is None:
            return
        yield msg

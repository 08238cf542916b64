"""The event publisher: a background thread that sends each message through RabbitMQ
with pika, publisher confirms, a rate limit and retries, so that HTTP handlers never
block on the broker and no event is lost while the broker is away.

Each message goes to the default exchange with routing key = queue name, in the
subscriber's vhost (one pika connection per vhost, opened on first use). A message is
*done* when the broker confirmed it, returned it as unroutable (the queue is gone) or
nacked it (the queue is full: with `reject-publish-dlx` the broker dead-letters it).
Connection failures are retried with backoff, for ever, until `stop()`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import pika
import pika.exceptions

from .broker import BrokerAdmin
from .events import Message

log = logging.getLogger(__name__)


@dataclass
class PublisherStats:
    submitted: int = 0
    confirmed: int = 0
    unroutable: int = 0
    nacked: int = 0
    retries: int = 0
    connection_failures: int = 0
    pending: int = 0


@dataclass(order=True)
class _Item:
    not_before: float
    seq: int
    message: Message = field(compare=False)


_STOP = object()


class Publisher:
    """`rate`: messages per second (0 = unlimited). `backoff`: first retry delay and cap."""

    def __init__(
        self,
        broker: BrokerAdmin | None,
        *,
        rate: float = 500.0,
        name: str = "site",
        backoff: tuple[float, float] = (0.2, 10.0),
        sent_log_size: int = 100_000,
    ) -> None:
        self.broker = broker
        self.rate = rate
        self.name = name
        self.backoff = backoff
        self.stats = PublisherStats()
        # (time, vhost, queue, message_id, outcome) of every finished message, newest last.
        self.sent: deque[tuple[float, str, str, str, str]] = deque(maxlen=sent_log_size)
        self._inbox: queue.Queue[object] = queue.Queue()
        self._seq = itertools.count(1)
        self._pending: dict[int, None] = {}  # insertion-ordered: first key = oldest pending
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: dict[str, tuple[pika.BlockingConnection, object]] = {}
        self._last_submitted = 0

    # -- submitting (any thread) ----------------------------------------------------

    def submit(self, message: Message, delay: float = 0.0) -> int:
        seq = next(self._seq)
        with self._cond:
            self._pending[seq] = None
            self.stats.submitted += 1
            self.stats.pending = len(self._pending)
            self._last_submitted = seq
        if self.broker is None:  # no broker: record and finish at once
            self._finish(seq, message, "no-broker")
        else:
            self._inbox.put(_Item(time.monotonic() + delay, seq, message))
        return seq

    def _finish(self, seq: int, message: Message, outcome: str) -> None:
        with self._cond:
            self._pending.pop(seq, None)
            self.stats.pending = len(self._pending)
            self.sent.append((time.time(), message.vhost, message.queue, message.message_id, outcome))
            self._cond.notify_all()

    def _done_through(self, target: int) -> bool:
        first = next(iter(self._pending), None)
        return first is None or first > target

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every message submitted before this call is done."""
        with self._cond:
            target = self._last_submitted
            return self._cond.wait_for(lambda: self._done_through(target), timeout)

    async def drain(self, timeout: float = 30.0) -> None:
        """Await until everything submitted so far is confirmed (or otherwise done)."""
        with self._cond:
            target = self._last_submitted
            if self._done_through(target):
                return

        def waiter() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: self._done_through(target), timeout)

        if not await asyncio.to_thread(waiter):
            raise TimeoutError(f"publisher {self.name}: {self.stats.pending} messages still pending after {timeout}s")

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.broker is not None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"waldursim-publisher-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; messages not yet published are abandoned."""
        if self._thread is None:
            return
        self._stopping.set()
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def forget_vhost(self, vhost: str) -> None:
        """Called when a vhost is deleted: its connection is dead (closed in the thread)."""
        self._inbox.put(("forget", vhost))

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delayed: list[_Item] = []
        tokens, last = 0.0, time.monotonic()
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = 1.0
                if delayed:
                    timeout = max(0.0, min(timeout, delayed[0].not_before - now))
                item: object | None
                if delayed and delayed[0].not_before <= now:
                    item = heapq.heappop(delayed)
                else:
                    try:
                        item = self._inbox.get(timeout=timeout)
                    except queue.Empty:
                        self._service_heartbeats()
                        continue
                if item is _STOP:
                    break
                if isinstance(item, tuple):
                    self._close(item[1])
                    continue
                assert isinstance(item, _Item)
                if item.not_before > time.monotonic():
                    heapq.heappush(delayed, item)
                    continue
                if self.rate > 0:  # token bucket, burst of one second's worth
                    now = time.monotonic()
                    tokens = min(self.rate, tokens + (now - last) * self.rate)
                    last = now
                    if tokens < 1.0:
                        time.sleep((1.0 - tokens) / self.rate)
                        tokens, last = 1.0, time.monotonic()
                    tokens -= 1.0
                self._publish(item)
        finally:
            for vhost in list(self._connections):
                self._close(vhost)

    def _channel(self, vhost: str):
        conn_ch = self._connections.get(vhost)
        if conn_ch is not None and conn_ch[0].is_open and conn_ch[1].is_open:  # type: ignore[attr-defined]
            return conn_ch[1]
        self._close(vhost)
        assert self.broker is not None
        params = pika.ConnectionParameters(
            host=self.broker.amqp_host,
            port=self.broker.amqp_port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(self.broker.username, self.broker.password),
            heartbeat=30,
            blocked_connection_timeout=30,
            socket_timeout=5,
            connection_attempts=1,
        )
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        self._connections[vhost] = (conn, channel)
        return channel

    def _close(self, vhost: str) -> None:
        conn_ch = self._connections.pop(vhost, None)
        if conn_ch is not None:
            try:
                if conn_ch[0].is_open:
                    conn_ch[0].close()
            except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                pass

    def _service_heartbeats(self) -> None:
        for vhost, (conn, _ch) in list(self._connections.items()):
            try:
                conn.process_data_events(0)
            except Exception:  # noqa: BLE001
                self._close(vhost)

    def _publish(self, item: _Item) -> None:
        message = item.message
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            headers={"x-message-id": message.message_id},
        )
        delay = self.backoff[0]
        while not self._stopping.is_set():
            try:
                channel = self._channel(message.vhost)
                channel.basic_publish(
                    exchange="", routing_key=message.queue, body=message.body, properties=properties, mandatory=True
                )
                self.stats.confirmed += 1
                self._finish(item.seq, message, "confirmed")
                return
            except pika.exceptions.UnroutableError:
                self.stats.unroutable += 1
                self._finish(item.seq, message, "unroutable")
                return
            except pika.exceptions.NackError:
                self.stats.nacked += 1
                self._finish(item.seq, message, "nacked")
                return
            except Exception as exc:  # noqa: BLE001 - any broker/socket failure: back off and retry
                self.stats.connection_failures += 1
                self.stats.retries += 1
                log.warning("publisher %s: %s to %s/%s failed (%r); retrying in %.1fs",
                            self.name, message.action, message.vhost, message.queue, exc, delay)
                self._close(message.vhost)
                self._stopping.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])

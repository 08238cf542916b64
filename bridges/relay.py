"""Relay one broker subscription into Kafka, at-least-once, forever.

The rule that makes it at-least-once: a broker message is acknowledged only from the
Kafka delivery callback of its record (acks=all, idempotent producer). The broker's
prefetch bounds the unacknowledged window, so while Kafka is slow or down the bridge
stops reading instead of growing in memory.

The rule that keeps per-queue order: once a send fails on a connection, nothing more
is acked on it. The connection is torn down and the broker redelivers everything
unacked in order, so the *last* copy of each message in Kafka is in queue order —
which is what the last-writer-wins fold relies on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from streams.adapters.tls import tls_reason
from streams.contract.config import Secret
from streams.contract.schema import Origin

from bridges.health import Health
from bridges.outlet import KafkaOutlet, SendFailed
from bridges.metrics import BridgeMetrics
from bridges.records import to_record
from streams.errors import TransientError
from streams.retry import Backoff, retry_forever
from bridges.transports.base import (
    AuthenticationError,
    BrokerMessage,
    QueueNotFound,
    BrokerConnection,
    SubscriptionRefused,
    TransportError,
)
from bridges.transports.registry import open_connection, origin_of

log = logging.getLogger("usync.bridge")

# Credentials rejected is rarely fixed by the next attempt: retry, but more slowly.
AUTH_BACKOFF_BASE = 15.0
# Refusals that a new registration through the Waldur API can fix. A missing queue (deleted
# on the broker, its consumer cancelled, web-STOMP closing on SUBSCRIBE) is fixed by the
# registration itself (Waldur's create_queue declares it again), so it re-registers at
# once and reconnects on the ordinary 1 s backoff, not the credentials' 15 s one: measured,
# the queue is consumed again 0.8-2.9 s after its deletion on every transport
# (tests/bridge/test_queue_recovery.py; docs/operator-guide.md has the table).
REREGISTER = (AuthenticationError, SubscriptionRefused)


def _relayable(exc: BaseException) -> bool:
    """What the relay reconnects after: every transport failure (the broker refusing us
    included: Waldur or an operator may fix it), Kafka away, a socket error. Anything else
    is a bug: it stops the bridge loudly."""
    return isinstance(exc, (TransportError, TransientError, OSError))
# Records go to Kafka when this many are gathered, or this long after the first of them
# (or, while Kafka still has the partition's previous batch, once it acknowledged it).
FLUSH_RECORDS = 500
LINGER_SECONDS = 0.002


@dataclass
class Credential:
    """One broker login: a Waldur event subscription (or a configured one)."""

    login: str
    passcode: Secret
    vhost: str
    queues: list[str]
    offerings: list[str] = field(default_factory=list)  # registered ones: whose queues these are


@dataclass
class SubscriptionRelay:
    """Moves every message of one credential's queues into Kafka; never gives up."""

    site: str
    broker_url: str
    credential: Credential
    outlet: KafkaOutlet
    health: Health
    metrics: BridgeMetrics
    prefetch: int = 1000
    heartbeat: float = 10.0
    # Called when the broker rejects the credential; returns a fresh one (re-registration).
    refresh_credential: Callable[[], Awaitable[Credential]] | None = None
    # Called once subscribed again after a missing queue was re-registered: events published
    # while it was missing were unroutable at Waldur, so the caller repairs that window.
    on_resubscribed: Callable[[Credential], None] | None = None
    rng: random.Random = field(default_factory=random.Random)
    ssl_context: ssl.SSLContext | None = None  # the site's broker CA / client certificate (None: the system's)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set by stop()
    queue_lost_at: float | None = None  # monotonic time a missing queue was first seen

    @property
    def name(self) -> str:
        return f"{self.site}/{self.credential.login[:8]}"

    @property
    def origin(self) -> Origin:
        return origin_of(self.broker_url)

    def stop(self) -> None:
        """Stop reading; what is in flight is still acked once Kafka has it."""
        self.stopping.set()

    async def run(self) -> None:
        """Relay until stopped, through any outage (``retry_forever`` with this relay's classes)."""
        backoff = Backoff(rng=self.rng)
        auth_backoff = Backoff(base=AUTH_BACKOFF_BASE, rng=self.rng)
        await retry_forever(lambda: self._connected_until_stopped(backoff), self.name, transient=_relayable,
                            backoff_for=lambda exc: auth_backoff if isinstance(exc, AuthenticationError) else backoff,
                            on_retry=self._failed, sleep=self._sleep, logger=log)
        self.health.set(self.name, "stopped")

    async def _connected_until_stopped(self, backoff: Backoff) -> None:
        while not self.stopping.is_set():
            await self.outlet.ready()
            await self._session(backoff)

    async def _failed(self, exc: BaseException, _delay: float) -> None:
        """Say why on /health; re-register after a refusal; drop a producer that failed."""
        if isinstance(exc, AuthenticationError):
            self._down(f"credentials rejected: {exc.message}")
        elif isinstance(exc, SubscriptionRefused):
            missing = "not found" if isinstance(exc, QueueNotFound) else "refused"
            self._down(f"queue {exc.queue or '(unnamed)'} {missing}: {exc.message}; re-registering")
            if self.queue_lost_at is None:
                self.queue_lost_at = time.monotonic()
        elif isinstance(exc, SendFailed):
            self._down(f"Kafka: {exc}")
            await self.outlet.reset(exc)
        elif (tls := tls_reason(exc)) is not None:
            self._down(f"TLS handshake with {self.broker_url} refused: {tls}")
        else:
            self._down(f"{type(exc).__name__}: {exc}")
        self.metrics.reconnects.labels(self.site).inc()
        if isinstance(exc, REREGISTER):
            await self._refresh()

    async def _session(self, backoff: Backoff) -> None:
        source = open_connection(
            self.broker_url, self.credential.login, self.credential.passcode.reveal(),
            self.credential.vhost, heartbeat=self.heartbeat, ssl_context=self.ssl_context,
        )
        try:
            await source.connect()
            for queue in self.credential.queues:
                await source.subscribe(queue, self.prefetch)
            backoff.reset()
            self.health.set(self.name, "connected", f"{len(self.credential.queues)} queues")
            log.info("%s: connected, %d queues", self.name, len(self.credential.queues))
            self._resubscribed()
            await _Pump(self, source).run()
        finally:
            await source.close()

    def _resubscribed(self) -> None:
        """After a missing queue: say how long it was gone and let the caller repair the gap."""
        if self.queue_lost_at is None:
            return
        gap, self.queue_lost_at = time.monotonic() - self.queue_lost_at, None
        log.warning("%s: subscribed again %.1f s after a queue went missing; events published "
                    "meanwhile were unroutable at Waldur", self.name, gap)
        self.metrics.queue_recoveries.labels(self.site).inc()
        if self.on_resubscribed is not None:
            self.on_resubscribed(self.credential)

    def _down(self, reason: str) -> None:
        self.health.set(self.name, "disconnected", reason)
        log.warning("%s: %s", self.name, reason)

    async def _refresh(self) -> None:
        if self.refresh_credential is None:
            return
        try:
            self.credential = await self.refresh_credential()
        except Exception as exc:  # the API may be down too; the next round retries
            log.warning("%s: re-registration failed: %s", self.name, exc)

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), delay)
        except TimeoutError:
            pass


class _Pump:
    """One connection's life: read, send to Kafka, ack what Kafka has."""

    def __init__(self, relay: SubscriptionRelay, source: BrokerConnection) -> None:
        self.relay = relay
        self.source = source
        self.delivered: list[BrokerMessage] = []  # confirmed by Kafka, not yet acked
        self.wake_acker = asyncio.Event()
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        # Labelled children resolved once: .labels() per message is measurable at 10k+/s.
        self.received = relay.metrics.received.labels(relay.site)
        self.relayed = relay.metrics.relayed.labels(relay.site)
        self.dead_lettered = relay.metrics.dead_lettered.labels(relay.site)
        self.in_flight = 0
        # Read but not yet counted in the received and in-flight metrics: counted per batch
        # sent (a metric update takes a lock; per message it is measurable).
        self.uncounted = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.batches = relay.outlet.batches()
        self.unsent = asyncio.Event()
        self.unblocked = False  # a partition's batch was acknowledged: send its next one now
        self.closed = False

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop())
        flusher = asyncio.create_task(self._flush_loop())
        reader = asyncio.create_task(self._read_loop())
        stopping = asyncio.create_task(self.relay.stopping.wait())
        failed = asyncio.create_task(self.failed.wait())
        try:
            done, _ = await asyncio.wait({reader, flusher, stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
            self._raise_failure()  # a send failed: tear down even if the reader is idle
            if flusher in done:
                flusher.result()  # Kafka refused a batch
            if reader in done:
                reader.result()  # re-raise the transport's failure
            else:
                reader.cancel()
            # Graceful end (SIGTERM): send what is gathered, let Kafka confirm it, ack it, then close.
            await self._flush()
            await asyncio.wait_for(self.drained.wait(), timeout=30)
            self._raise_failure()
            await self._ack_pending()
        finally:
            for task in (reader, stopping, failed, acker, flusher):
                task.cancel()
            self.closed = True
            self._count()
            self.relay.metrics.in_flight.dec(self.in_flight)

    async def _read_loop(self) -> None:
        relay = self.relay
        site, origin, batches = relay.site, relay.origin, self.batches
        redelivered = relay.metrics.redelivered.labels(site)
        add_nowait, unsent, drained = batches.add_nowait, self.unsent, self.drained
        now, utc = datetime.now, timezone.utc
        async for message in self.source.messages():
            if self.failure is not None:
                raise self.failure
            if message.redelivered:
                redelivered.inc()
            record = to_record(site, origin, message, now(utc))
            if not self.in_flight:
                drained.clear()
            self.in_flight += 1
            self.uncounted += 1
            if not add_nowait(record, message):
                self._count()  # ``add`` may send a batch: count its records first
                await batches.add(record, message, self._on_delivery)
            if batches.count >= FLUSH_RECORDS:
                await self._flush()
            else:
                unsent.set()
        self._raise_failure()

    async def _flush_loop(self) -> None:
        """Send what the reader gathered once it has lingered: batches, not records, go to
        Kafka. A partition whose previous batch Kafka has not acknowledged yet keeps
        gathering; its acknowledgement sends the next batch without a linger."""
        while True:
            await self.unsent.wait()
            if not self.unblocked:
                await asyncio.sleep(LINGER_SECONDS)
            self.unblocked = False
            self.unsent.clear()
            await self._flush(everything=False)

    async def _flush(self, everything: bool = True) -> None:
        self._count()
        await self.batches.flush(self._on_delivery, everything=everything)

    def _count(self) -> None:
        if self.uncounted:
            self.received.inc(self.uncounted)
            self.relay.metrics.in_flight.inc(self.uncounted)
            self.uncounted = 0

    def _on_delivery(self, future: asyncio.Future, messages: list[BrokerMessage], kind: str, opened_at: float) -> None:
        if self.closed:  # the connection is gone (its in-flight count already settled); the broker redelivers
            return
        metrics = self.relay.metrics
        self.in_flight -= len(messages)
        metrics.in_flight.dec(len(messages))
        if self.in_flight == 0:
            self.drained.set()
        if future.cancelled() or future.exception() is not None:
            if self.failure is None:
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self.failure = SendFailed(f"send failed: {reason}", self.batches.producer)
                self.failed.set()
                self.wake_acker.set()
            return
        if self.failure is not None:
            return  # redelivered after teardown; acking now could reorder the queue's last copies
        metrics.send_seconds.observe(time.perf_counter() - opened_at)
        (self.dead_lettered if kind == "dlq" else self.relayed).inc(len(messages))
        self.delivered.extend(messages)
        self.wake_acker.set()
        if self.batches.open:
            self.unblocked = True
            self.unsent.set()

    async def _ack_loop(self) -> None:
        while True:
            await self.wake_acker.wait()
            self.wake_acker.clear()
            if self.failure is not None:
                return
            await self._ack_pending()

    async def _ack_pending(self) -> None:
        while self.delivered and self.failure is None:
            delivered, self.delivered = self.delivered, []
            await self.source.ack_many(delivered)

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

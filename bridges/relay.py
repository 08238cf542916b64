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
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from streams.config import Secret
from streams.schema import Source as Transport

from bridges.health import Health
from bridges.kafka import KafkaOutlet, KafkaUnavailable
from bridges.metrics import BridgeMetrics
from bridges.records import to_record
from streams.retry import Backoff
from bridges.source import AuthenticationError, BrokerMessage, QueueNotFound, Source, SourceError, open_source

log = logging.getLogger("usync.bridge")

# Credentials rejected is rarely fixed by the next attempt: retry, but more slowly.
AUTH_BACKOFF_BASE = 15.0


@dataclass
class Credential:
    """One broker login: a Waldur event subscription (or a configured one)."""

    login: str
    passcode: Secret
    vhost: str
    queues: list[str]


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
    rng: random.Random = field(default_factory=random.Random)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return f"{self.site}/{self.credential.login[:8]}"

    @property
    def transport(self) -> Transport:
        return Transport.AMQP if self.broker_url.startswith("amqp") else Transport.STOMP

    def stop(self) -> None:
        """Stop reading; what is in flight is still acked once Kafka has it."""
        self._stopping.set()

    async def run(self) -> None:
        backoff = Backoff(rng=self.rng)
        auth_backoff = Backoff(base=AUTH_BACKOFF_BASE, rng=self.rng)
        while not self._stopping.is_set():
            try:
                await self.outlet.ready()
                await self._session(backoff)
                continue
            except AuthenticationError as exc:
                self._down(f"credentials rejected: {exc.message}")
                delay = auth_backoff.next_delay()
                await self._refresh()
            except QueueNotFound as exc:
                self._down(f"queue not found: {exc.message}")
                delay = auth_backoff.next_delay()
                await self._refresh()
            except KafkaUnavailable as exc:
                self._down(f"Kafka: {exc}")
                await self.outlet.reset(exc, exc.generation)
                delay = backoff.next_delay()
            except (SourceError, OSError) as exc:
                self._down(f"{type(exc).__name__}: {exc}")
                delay = backoff.next_delay()
            self.metrics.reconnects.labels(self.site).inc()
            log.warning("%s: reconnecting in %.1f s", self.name, delay)
            await self._sleep(delay)
        self.health.set(self.name, "stopped")

    async def _session(self, backoff: Backoff) -> None:
        source = open_source(
            self.broker_url, self.credential.login, self.credential.passcode.reveal(),
            self.credential.vhost, heartbeat=self.heartbeat,
        )
        try:
            await source.connect()
            for queue in self.credential.queues:
                await source.subscribe(queue, self.prefetch)
            backoff.reset()
            self.health.set(self.name, "connected", f"{len(self.credential.queues)} queues")
            log.info("%s: connected, %d queues", self.name, len(self.credential.queues))
            await _Pump(self, source).run()
        finally:
            await source.close()

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
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            pass


class _Pump:
    """One connection's life: read, send to Kafka, ack what Kafka has."""

    def __init__(self, relay: SubscriptionRelay, source: Source) -> None:
        self.relay = relay
        self.source = source
        self.delivered: collections.deque[BrokerMessage] = collections.deque()
        self.wake_acker = asyncio.Event()
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.generation = relay.outlet.generation
        # Labelled children resolved once: .labels() per message is measurable at 10k+/s.
        self.relayed = relay.metrics.relayed.labels(relay.site)
        self.dead_lettered = relay.metrics.dead_lettered.labels(relay.site)
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.drained.set()

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop())
        reader = asyncio.create_task(self._read_loop())
        stopping = asyncio.create_task(self.relay._stopping.wait())
        failed = asyncio.create_task(self.failed.wait())
        try:
            done, _ = await asyncio.wait({reader, stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
            self._raise_failure()  # a send failed: tear down even if the reader is idle
            if reader in done:
                reader.result()  # re-raise the transport's failure
            else:
                reader.cancel()
            # Graceful end (SIGTERM): let Kafka confirm what is in flight, ack it, then close.
            await asyncio.wait_for(self.drained.wait(), timeout=30)
            self._raise_failure()
            await self._ack_pending()
        finally:
            for task in (reader, stopping, failed, acker):
                task.cancel()
            self.relay.metrics.in_flight.dec(self.in_flight)

    async def _read_loop(self) -> None:
        relay = self.relay
        metrics, site, transport, send = relay.metrics, relay.site, relay.transport, relay.outlet.send
        received, redelivered, in_flight = metrics.received.labels(site), metrics.redelivered.labels(site), metrics.in_flight
        async for message in self.source.messages():
            self._raise_failure()
            received.inc()
            if message.redelivered:
                redelivered.inc()
            record = to_record(site, transport, message, datetime.now(timezone.utc))
            started = time.perf_counter()
            future = await send(record)
            self.in_flight += 1
            self.drained.clear()
            in_flight.inc()
            future.add_done_callback(lambda f, m=message, r=record, t=started: self._on_delivery(f, m, r, t))
        self._raise_failure()

    def _on_delivery(self, future: asyncio.Future, message: BrokerMessage, record, started: float) -> None:
        metrics = self.relay.metrics
        self.in_flight -= 1
        metrics.in_flight.dec()
        if self.in_flight == 0:
            self.drained.set()
        if future.cancelled() or future.exception() is not None:
            if self.failure is None:
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self.failure = KafkaUnavailable(f"send failed: {reason}", self.generation)
                self.failed.set()
                self.wake_acker.set()
            return
        if self.failure is not None:
            return  # redelivered after teardown; acking now could reorder the queue's last copies
        metrics.send_seconds.observe(time.perf_counter() - started)
        (self.dead_lettered if record.topic_kind == "dlq" else self.relayed).inc()
        self.delivered.append(message)
        self.wake_acker.set()

    async def _ack_loop(self) -> None:
        while True:
            await self.wake_acker.wait()
            self.wake_acker.clear()
            if self.failure is not None:
                return
            await self._ack_pending()

    async def _ack_pending(self) -> None:
        delivered, ack = self.delivered, self.source.ack
        while delivered and self.failure is None:
            await ack(delivered.popleft())

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

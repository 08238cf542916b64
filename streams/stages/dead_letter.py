"""The worker's dead-letter stage: a Kafka record the worker cannot use goes to the DLQ topic.

A poison record (one whose bytes do not decode, or a correction request whose handling
raised something that is not a :class:`streams.errors.TransientError`) used to stop its
partition: the fold crashed the worker on it after every restart, the sink stopped. Now
the record goes to ``config.kafka.dlq_topic`` as a :class:`DeadLetter` with its raw
bytes, topic / partition / offset and the reason; it is counted
(``usync_dead_lettered_total{topic,reason_class}``), logged at ERROR, and ``/health``
says ``degraded`` for :data:`DEGRADED_FOR` seconds after. :meth:`DeadLetters.send`
returns only once Kafka acknowledged the letter (retried forever through an outage),
so the caller commits past the poison record only after it is safe in the DLQ
(docs/invariants.md, 1). Transient failures are never dead-lettered: they are retried.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Protocol

from streams.contract.schema import DeadLetter, envelope_encoder
from streams.metrics import Metrics
from streams.ports import Emit
from streams.retry import retry_forever

log = logging.getLogger("usync.dlq")

#: Seconds ``/health`` stays ``degraded`` after the last dead letter: a scrape or a probe
#: every few seconds sees it, and it clears by itself once the poison stops coming.
DEGRADED_FOR = 300.0

UNDECODABLE = "undecodable"  # the record's bytes are not what its topic's schema says
HANDLER_ERROR = "handler-error"  # handling the decoded record raised a non-transient error


class Where(Protocol):
    """Where a record was read (an aiokafka ``ConsumerRecord`` is one)."""

    topic: str
    partition: int
    offset: int


class DeadLetters:
    """Writes poison records to the DLQ; counts them for the metric and ``/health``."""

    def __init__(self, emit: Emit, metrics: Metrics) -> None:
        self.emit = emit
        self.metrics = metrics
        self.count = 0
        self.last_at: float | None = None  # time.monotonic() of the last letter

    async def send(self, topic: str, partition: int, offset: int, raw: bytes, reason_class: str, reason: str) -> None:
        """The record is on the DLQ (acknowledged by Kafka) when this returns."""
        where = f"{topic}/{partition}/{offset}"
        letter = DeadLetter(event_id=where, site="", queue="", reason=f"{reason_class}: {reason}", raw=raw,
                            received_at=datetime.now(timezone.utc), topic=topic, partition=partition, offset=offset)
        value = envelope_encoder.encode(letter)
        await retry_forever(lambda: self.emit(where.encode(), value), f"dead letter for {where}")
        self.metrics.dead_lettered.labels(topic, reason_class).inc()
        self.count += 1
        self.last_at = time.monotonic()
        log.error("dead-lettered %s (%s: %s); the partition moves on, see `usync tail --topic dlq`",
                  where, reason_class, reason)

    async def record(self, where: Where, raw: bytes, reason_class: str, reason: str) -> None:
        await self.send(where.topic, where.partition, where.offset, raw, reason_class, reason)

    def degraded(self) -> bool:
        return self.last_at is not None and time.monotonic() - self.last_at < DEGRADED_FOR

"""Broker message -> Kafka record: the envelope, or a dead letter saying why not.

Pure: no I/O, so every rule about what reaches the events topic and what reaches the
DLQ is tested without a broker.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, NamedTuple

from streams.schema import (
    SCHEMA_VERSION,
    DeadLetter,
    Envelope,
    PayloadError,
    Source,
    decode_payload,
    envelope_encoder,
    event_key,
    fallback_event_id,
    normalize_uuid,
)

from bridges.source import BrokerMessage

# subscription_{subscription_uuid}_offering_{offering_uuid}_{object_type}
_SUBSCRIPTION_QUEUE: Final = re.compile(r"^subscription_[0-9a-f]{32}_offering_(?P<offering>[0-9a-f]{32})_(?P<type>.+)$")
# Broker headers that describe the delivery, not the message: they differ on every
# redelivery and would make identical events look different to audit readers.
_DELIVERY_HEADERS: Final = frozenset({"ack", "subscription", "message-id", "redelivered", "destination"})


class Record(NamedTuple):
    """One Kafka record, ready for the producer."""

    topic_kind: str  # "events" or "dlq"
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str


def queue_offering(queue: str) -> tuple[str | None, str | None]:
    """Offering uuid and object type encoded in a subscription-style queue name."""
    match = _SUBSCRIPTION_QUEUE.match(queue)
    if match is None:
        return None, None
    return match["offering"], match["type"]


def original_headers(message: BrokerMessage) -> dict[str, str]:
    return {k: v for k, v in message.headers.items() if k not in _DELIVERY_HEADERS}


def to_record(site: str, transport: Source, message: BrokerMessage, received_at: datetime) -> Record:
    """The events-topic record for ``message``, or a DLQ record if it cannot be one."""
    headers = original_headers(message)
    event_id = headers.get("x-message-id") or fallback_event_id(site, message.queue, message.body)
    try:
        payload = decode_payload(message.body)
    except PayloadError as exc:
        return _dead(site, message, headers, event_id, received_at, str(exc))
    queue_offering_uuid, queue_type = queue_offering(message.queue)
    offering = payload.offering_uuid or queue_offering_uuid
    if offering is None:
        return _dead(site, message, headers, event_id, received_at, "unroutable: no offering_uuid in payload or queue name")
    offering = normalize_uuid(offering)
    envelope = Envelope(
        event_id=event_id,
        site=site,
        source=transport,
        offering_uuid=offering,
        object_type=payload.object_type or queue_type or "offering_user",
        queue=message.queue,
        received_at=received_at,
        headers=headers,
        body=payload,
    )
    key = event_key(site, offering)
    return Record("events", key.encode(), envelope_encoder.encode(envelope), _kafka_headers(event_id, site, transport, message.queue, headers), event_id)


def _dead(site: str, message: BrokerMessage, headers: dict[str, str], event_id: str, received_at: datetime, reason: str) -> Record:
    offering, _ = queue_offering(message.queue)
    letter = DeadLetter(
        event_id=event_id, site=site, queue=message.queue, reason=reason,
        raw=message.body, headers=headers, received_at=received_at,
    )
    key = event_key(site, offering or message.queue)
    kafka_headers = _kafka_headers(event_id, site, None, message.queue, headers) + [("usync.reason", reason.encode())]
    return Record("dlq", key.encode(), envelope_encoder.encode(letter), kafka_headers, event_id)


def _kafka_headers(event_id: str, site: str, transport: Source | None, queue: str, broker: dict[str, str]) -> list[tuple[str, bytes]]:
    headers = [
        ("usync.event-id", event_id.encode()),
        ("usync.site", site.encode()),
        ("usync.queue", queue.encode()),
        ("usync.schema-version", str(SCHEMA_VERSION).encode()),
    ]
    if transport is not None:
        headers.append(("usync.source", transport.value.encode()))
    headers.extend((f"broker.{name}", value.encode()) for name, value in broker.items())
    return headers

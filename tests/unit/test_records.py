"""Broker message -> events-topic record or dead letter, without any broker."""

from datetime import datetime, timezone

import msgspec
import pytest

from bridges.records import queue_offering, to_record
from bridges.source import BrokerMessage
from streams.schema import DeadLetter, OfferingUserEvent, Source, envelope_decoder

SUB = "5d1c0e6f7a8b4c9daa0b1c2d3e4f5a6b"
OFFERING = "9e8d7c6b5a4f43218765fedcba987654"
QUEUE = f"subscription_{SUB}_offering_{OFFERING}_offering_user"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
GOOD = {"action": "update", "offering_user_uuid": "0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01",
        "user_uuid": "1a2b3c4d5e6f40718293a4b5c6d7e8f9", "username": "alice", "state": "OK",
        "changed_fields": ["username"], "offering_uuid": OFFERING}


def message(body: bytes, queue: str = QUEUE, **headers: str) -> BrokerMessage:
    base = {"x-message-id": "m1", "content-type": "application/json", "persistent": "true",
            "ack": "T_1@@session@@1", "message-id": "T_1@@session@@1", "subscription": "sub-0",
            "destination": f"/amq/queue/{queue}", "redelivered": "false"}
    return BrokerMessage(queue=queue, body=body, headers={**base, **headers}, ack_id="T_1@@session@@1",
                         subscription="sub-0", destination=f"/amq/queue/{queue}", message_id="T_1",
                         redelivered=False, epoch=1)


def test_a_good_event_becomes_an_envelope_keyed_by_site_and_offering():
    record = to_record("b", Source.STOMP, message(msgspec.json.encode(GOOD)), NOW)
    assert record.topic_kind == "events"
    assert record.key == f"b:{OFFERING}".encode()
    envelope = envelope_decoder.decode(record.value)
    assert envelope.event_id == "m1"
    assert envelope.site == "b" and envelope.source is Source.STOMP and envelope.queue == QUEUE
    assert isinstance(envelope.body, OfferingUserEvent) and envelope.body.username == "alice"
    assert envelope.received_at == NOW


def test_delivery_headers_are_not_part_of_the_event():
    record = to_record("b", Source.STOMP, message(msgspec.json.encode(GOOD)), NOW)
    envelope = envelope_decoder.decode(record.value)
    assert envelope.headers == {"x-message-id": "m1", "content-type": "application/json", "persistent": "true"}
    names = dict(record.headers)
    assert names["usync.event-id"] == b"m1" and names["usync.site"] == b"b" and names["usync.source"] == b"stomp"
    assert names["usync.schema-version"] == b"1" and names["broker.x-message-id"] == b"m1"
    assert "broker.ack" not in names


def test_a_redelivery_gives_the_same_event_id_and_value():
    body = msgspec.json.encode(GOOD)
    first = to_record("b", Source.STOMP, message(body), NOW)
    again = to_record("b", Source.STOMP, message(body, ack="T_9", redelivered="true"), NOW)
    assert (first.key, first.value, first.event_id) == (again.key, again.value, again.event_id)


def test_without_x_message_id_the_id_is_a_hash_of_site_queue_and_body():
    body = msgspec.json.encode(GOOD)
    no_id = message(body)
    no_id.headers.pop("x-message-id")
    record = to_record("b", Source.AMQP, no_id, NOW)
    assert len(record.event_id) == 32
    assert record.event_id == to_record("b", Source.AMQP, no_id, NOW).event_id
    assert record.event_id != to_record("c", Source.AMQP, no_id, NOW).event_id


def test_the_offering_comes_from_the_queue_name_when_the_payload_lacks_it():
    body = msgspec.json.encode({k: v for k, v in GOOD.items() if k != "offering_uuid"})
    record = to_record("b", Source.STOMP, message(body), NOW)
    assert envelope_decoder.decode(record.value).offering_uuid == OFFERING


@pytest.mark.parametrize(
    ("body", "queue", "reason"),
    [
        (b"\xff\xfe not json", QUEUE, "not JSON"),
        (b'"a string"', QUEUE, "Expected `object`"),
        (msgspec.json.encode({"action": "update"}), QUEUE, "offering_user_uuid"),
        (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "offering_uuid"}), "consumer_abc", "unroutable"),
    ],
)
def test_undecodable_or_unroutable_messages_become_dead_letters_with_raw_bytes(body, queue, reason):
    record = to_record("b", Source.STOMP, message(body, queue=queue), NOW)
    assert record.topic_kind == "dlq"
    letter = msgspec.json.decode(record.value, type=DeadLetter)
    assert letter.raw == body
    assert reason in letter.reason
    assert letter.queue == queue and letter.site == "b" and letter.event_id == "m1"
    assert dict(record.headers)["usync.reason"].decode() == letter.reason


def test_queue_offering_parses_subscription_queues_only():
    assert queue_offering(QUEUE) == (OFFERING, "offering_user")
    assert queue_offering("consumer_0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01") == (None, None)


def test_the_cached_partitioner_agrees_with_kafkas_default():
    from aiokafka.partitioner import DefaultPartitioner

    from bridges.kafka import partition_for

    partitions = (0, 1, 2, 3, 4, 5, 6, 7)
    for i in range(200):
        key = f"b:{i:032x}".encode()
        assert partition_for(key, partitions) == DefaultPartitioner()(key, list(partitions), list(partitions))

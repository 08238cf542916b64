"""Broker message -> events-topic record or dead letter, without any broker."""

from datetime import datetime, timezone

import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.records import _UUID_FIELDS, OfferingUserEventUnchecked, fast_decode_payload, queue_offering, to_record
from bridges.transports.base import BrokerMessage
from streams.contract.schema import (
    DeadLetter,
    OfferingUserEvent,
    PayloadError,
    Origin,
    decode_payload,
    envelope_decoder,
    envelope_encoder,
)

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
    record = to_record("b", Origin.STOMP, message(msgspec.json.encode(GOOD)), NOW)
    assert record.topic_kind == "events"
    assert record.key == f"b:{OFFERING}".encode()
    envelope = envelope_decoder.decode(record.value)
    assert envelope.event_id == "m1"
    assert envelope.site == "b" and envelope.origin is Origin.STOMP and envelope.queue == QUEUE
    assert isinstance(envelope.body, OfferingUserEvent) and envelope.body.username == "alice"
    assert envelope.received_at == NOW


def test_delivery_headers_are_not_part_of_the_event():
    record = to_record("b", Origin.STOMP, message(msgspec.json.encode(GOOD)), NOW)
    envelope = envelope_decoder.decode(record.value)
    assert envelope.headers == {"x-message-id": "m1", "content-type": "application/json", "persistent": "true"}
    names = dict(record.headers)
    assert names["usync.event-id"] == b"m1" and names["usync.site"] == b"b" and names["usync.source"] == b"stomp"
    assert names["usync.schema-version"] == b"1" and names["broker.x-message-id"] == b"m1"
    assert "broker.ack" not in names


def test_a_redelivery_gives_the_same_event_id_and_value():
    body = msgspec.json.encode(GOOD)
    first = to_record("b", Origin.STOMP, message(body), NOW)
    again = to_record("b", Origin.STOMP, message(body, ack="T_9", redelivered="true"), NOW)
    assert (first.key, first.value, first.event_id) == (again.key, again.value, again.event_id)


def test_without_x_message_id_the_id_is_a_hash_of_site_queue_and_body():
    body = msgspec.json.encode(GOOD)
    no_id = message(body)
    no_id.headers.pop("x-message-id")
    record = to_record("b", Origin.AMQP, no_id, NOW)
    assert len(record.event_id) == 32
    assert record.event_id == to_record("b", Origin.AMQP, no_id, NOW).event_id
    assert record.event_id != to_record("c", Origin.AMQP, no_id, NOW).event_id


def test_the_offering_comes_from_the_queue_name_when_the_payload_lacks_it():
    body = msgspec.json.encode({k: v for k, v in GOOD.items() if k != "offering_uuid"})
    record = to_record("b", Origin.STOMP, message(body), NOW)
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
    record = to_record("b", Origin.STOMP, message(body, queue=queue), NOW)
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

    from bridges.outlet import partition_for

    partitions = (0, 1, 2, 3, 4, 5, 6, 7)
    for i in range(200):
        key = f"b:{i:032x}".encode()
        assert partition_for(key, partitions) == DefaultPartitioner()(key, list(partitions), list(partitions))


def test_kafka_headers_keep_their_names_and_order():
    record = to_record("b", Origin.AMQP, message(msgspec.json.encode(GOOD)), NOW)
    assert record.headers == [
        ("usync.event-id", b"m1"), ("usync.site", b"b"), ("usync.queue", QUEUE.encode()),
        ("usync.schema-version", b"1"), ("usync.source", b"amqp"),
        ("broker.x-message-id", b"m1"), ("broker.content-type", b"application/json"), ("broker.persistent", b"true"),
    ]
    dead = to_record("b", Origin.AMQP, message(b"[]"), NOW)
    assert [name for name, _ in dead.headers] == [
        "usync.event-id", "usync.site", "usync.queue", "usync.schema-version",
        "broker.x-message-id", "broker.content-type", "broker.persistent", "usync.reason",
    ]
    assert dead.key == f"b:{OFFERING}".encode()


def test_the_unchecked_twin_mirrors_the_event_but_for_the_uuid_patterns():
    ours, theirs = msgspec.structs.fields(OfferingUserEventUnchecked), msgspec.structs.fields(OfferingUserEvent)
    assert [(f.name, f.encode_name, f.default, f.default_factory) for f in ours] == [
        (f.name, f.encode_name, f.default, f.default_factory) for f in theirs
    ]
    ours_config, theirs_config = OfferingUserEventUnchecked.__struct_config__, OfferingUserEvent.__struct_config__
    for name in (name for name in dir(theirs_config) if not name.startswith("_")):
        assert getattr(ours_config, name) == getattr(theirs_config, name), name
    hints = typing.get_type_hints(OfferingUserEvent, include_extras=True)
    constrained = {name for name, hint in hints.items() if "pattern=" in repr(hint)}
    assert constrained == set(_UUID_FIELDS)


_HEX32 = st.text("0123456789abcdefABCDEF", min_size=32, max_size=32)
_UUIDISH = st.one_of(
    _HEX32,
    _HEX32.map(lambda h: f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"),  # dashed: valid too
    _HEX32.map(lambda h: h + "\n"),  # the pattern's $ accepts a final newline
    st.tuples(_HEX32, st.integers(0, 31), st.sampled_from(" g-_+x\u0660\u00e9\n")).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),
    st.text(min_size=32, max_size=32),
    st.text("0123456789abcdef", min_size=30, max_size=34),
    st.none(), st.integers(), st.lists(st.integers(), max_size=2),
)
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_OPTIONAL = {
    "offering_uuid": _UUIDISH, "username": _VALUE, "state": _VALUE, "runtime_state": _VALUE,
    "changed_fields": _VALUE, "attributes": _VALUE, "object_type": _VALUE,
    "kind": st.sampled_from(["event", "snapshot", 1]), "extra": _VALUE,
}
_GOOD_PAYLOAD = st.fixed_dictionaries(
    {"action": st.sampled_from(["create", "update", "username_set", "something_new"]),
     "offering_user_uuid": _HEX32, "user_uuid": _HEX32},
    optional={"offering_uuid": _HEX32, "username": st.text(max_size=8), "state": st.sampled_from(["OK", 3]),
              "object_type": st.sampled_from(["offering_user", "other"]), "changed_fields": st.lists(st.text(max_size=4), max_size=2)},
)
_PAYLOAD = st.one_of(
    _GOOD_PAYLOAD,
    # one field of a good event made odd: the cases where only one check can tell
    st.tuples(_GOOD_PAYLOAD, st.sampled_from(["offering_user_uuid", "user_uuid", "offering_uuid"]), _UUIDISH).map(
        lambda t: {**t[0], t[1]: t[2]}
    ),
    st.tuples(_GOOD_PAYLOAD, st.sampled_from(sorted(_OPTIONAL) + ["action"]), _VALUE).map(lambda t: {**t[0], t[1]: t[2]}),
    st.fixed_dictionaries({}, optional={"action": _VALUE, "offering_user_uuid": _UUIDISH, "user_uuid": _UUIDISH, **_OPTIONAL}),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_PAYLOAD.map(msgspec.json.encode), st.binary(max_size=64)))
def test_the_fast_decoder_agrees_with_decode_payload(raw):
    """Same event (same JSON once encoded) or the same reason, whatever the bytes."""
    try:
        expected = decode_payload(raw)
    except PayloadError as exc:
        with pytest.raises(PayloadError) as info:
            fast_decode_payload(raw)
        assert str(info.value) == str(exc)
        return
    got = fast_decode_payload(raw)
    assert envelope_encoder.encode(got) == envelope_encoder.encode(expected)
    assert (got.offering_uuid, got.object_type) == (expected.offering_uuid, expected.object_type)

"""The event contract: Waldur's five payload shapes, envelopes, and bad input."""

from datetime import datetime, timezone

import msgspec
import pytest

from streams.contract.schema import (
    Envelope,
    Lookup,
    OfferingUserEvent,
    OfferingUserRecord,
    PayloadError,
    SnapshotPage,
    Origin,
    decode_payload,
    envelope_decoder,
    envelope_encoder,
    fallback_event_id,
    json_schemas,
    state_display,
)

OU = "0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01"
USER = "1a2b3c4d5e6f40718293a4b5c6d7e8f9"
OFFERING = "9e8d7c6b5a4f43218765fedcba987654"

PAYLOADS = {
    "create": {
        "offering_user_uuid": OU, "user_uuid": USER, "username": "", "state": "Requested",
        "runtime_state": "Active", "action": "create", "attributes": {"email": "x@example.org"},
        "offering_uuid": OFFERING,
    },
    "update": {
        "offering_user_uuid": OU, "user_uuid": USER, "username": "alice", "state": "OK",
        "runtime_state": "Active", "changed_fields": ["username", "state"], "action": "update",
        "offering_uuid": OFFERING,
    },
    "delete": {"offering_user_uuid": OU, "user_uuid": USER, "username": "alice", "action": "delete",
               "offering_uuid": OFFERING},
    "attribute_update": {
        "offering_user_uuid": OU, "user_uuid": USER, "username": "alice", "action": "attribute_update",
        "changed_attributes": ["email"], "attributes": {"email": "y@example.org"}, "offering_uuid": OFFERING,
    },
    "username_set": {
        "offering_user_uuid": OU, "user_uuid": USER, "username": "alice", "state": 5,
        "action": "username_set", "resource_backend_ids": ["slurm-1"], "offering_uuid": OFFERING,
    },
}


@pytest.mark.parametrize("action", sorted(PAYLOADS))
def test_every_waldur_action_decodes(action):
    event = decode_payload(msgspec.json.encode(PAYLOADS[action]))
    assert event.action == action
    assert event.offering_user_uuid == OU
    assert event.offering_uuid == OFFERING


def test_username_set_carries_an_integer_state_that_reads_as_its_display_name():
    event = decode_payload(msgspec.json.encode(PAYLOADS["username_set"]))
    assert event.state == 5
    assert event.state_name == "OK"


def test_unknown_keys_and_actions_are_tolerated():
    body = dict(PAYLOADS["update"], action="something_new", brand_new_field={"a": 1})
    assert decode_payload(msgspec.json.encode(body)).action == "something_new"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"[1, 2, 3]", "Expected `object`"),
        (b'{"action": "update", "user_uuid": "' + USER.encode() + b'"}', "offering_user_uuid"),
        (b'{"action": "update", "offering_user_uuid": "zz", "user_uuid": "' + USER.encode() + b'"}',
         "offering_user_uuid"),
        (b'{"action": 7, "offering_user_uuid": "' + OU.encode() + b'", "user_uuid": "' + USER.encode() + b'"}',
         "$.action"),
    ],
)
def test_bad_bodies_raise_a_payload_error_saying_why(raw, reason):
    with pytest.raises(PayloadError, match=reason.replace("$", r"\$")):
        decode_payload(raw)


@pytest.mark.parametrize(
    ("state", "display"),
    [(5, "OK"), (1, "Requested"), ("OK", "OK"), ("ok", "OK"), ("Creating", "Creating"),
     (42, "42"), ("Brand new", "Brand new"), (None, None)],
)
def test_state_display(state, display):
    assert state_display(state) == display


def _envelope(body) -> Envelope:
    return Envelope(
        event_id="e1", site="b", origin=Origin.STOMP, offering_uuid=OFFERING, queue="q",
        received_at=datetime(2026, 11, 21, tzinfo=timezone.utc), headers={"x-message-id": "e1"}, body=body,
    )


@pytest.mark.parametrize(
    "body",
    [
        decode_payload(msgspec.json.encode(PAYLOADS["update"])),
        SnapshotPage(snapshot_id="s", offering_uuid=OFFERING, states=["OK"], page=1, last=True, total=1,
                     users=[OfferingUserRecord(uuid=OU, user_uuid=USER, user_username="u1",
                                               offering_uuid=OFFERING, username="alice", state="OK")]),
        Lookup(offering_user_uuid=OU, status=404),
    ],
)
def test_envelopes_round_trip_through_json(body):
    envelope = _envelope(body)
    decoded = envelope_decoder.decode(envelope_encoder.encode(envelope))
    assert decoded == envelope
    assert decoded.key == f"b:{OFFERING}"


def test_fallback_event_id_is_stable_and_distinguishes_queues():
    assert fallback_event_id("b", "q1", b"x") == fallback_event_id("b", "q1", b"x")
    assert fallback_event_id("b", "q1", b"x") != fallback_event_id("b", "q2", b"x")
    assert len(fallback_event_id("b", "q1", b"x")) == 32


def test_json_schema_describes_every_topic():
    schemas = json_schemas()
    assert set(schemas) == {"events", "outcomes", "dlq", "listings", "checkpoints", "user-index"}
    assert {"Listed", "Unlisted", "ListingSummary"} <= set(schemas["events"]["$defs"])
    assert {"CheckpointPart", "CheckpointManifest"} <= set(schemas["checkpoints"]["$defs"])
    envelope = schemas["events"]["$defs"]["Envelope"]
    assert {"event_id", "site", "source", "body", "received_at"} <= set(envelope["required"])
    assert "schema_version" in envelope["properties"]

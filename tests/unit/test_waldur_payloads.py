"""usync accepts Waldur's payloads as they really are (issue 15): `object_type` and
`schema_version` (1) on every payload of both queue styles, sparse `attributes`; and keeps
`schema_version` in the envelope body for audit readers.

The payloads come from the simulator's own store and dispatcher (waldursim's Store and
events.envelope, what Site routes), not written by hand, so a change there shows up here.
"""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from bridges.records import fast_decode_payload, to_record
from bridges.transports.base import BrokerMessage
from streams.contract.config import Endpoint, Link
from streams.core import as_dict, desired, empty_state, fold_many, row_key
from streams.contract.schema import (
    Envelope,
    OfferingUserEvent,
    OfferingUserRecord,
    SnapshotPage,
    Origin,
    decode_payload,
    envelope_decoder,
)
from waldursim import events
from waldursim.models import SLURM
from waldursim.store import Store

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def sim_payloads() -> tuple[Store, list[dict]]:
    """Every action once, as the simulated Waldur emits them (the dispatcher's envelope added)."""
    sent: list[dict] = []
    store = Store(emit=lambda ou, payload: sent.append(events.envelope(payload)))
    offering = store.create_offering(store.create_customer("sp"), "hpc", type=SLURM,
                                     exposed_attributes=["full_name", "email", "phone_number", "affiliations"])
    project = store.create_project(store.create_customer("c"), "p")
    store.create_resource(offering, project, "r", backend_id="acc-1")
    user = store.create_user("alice", phone_number="", affiliations=[])
    [ou] = store.add_project_member(user, project)
    store.set_username(ou, "alice_b")
    store.update_user(user, email="alice@lab.example")
    store.delete_offering_user(ou)
    return store, sent


def broker_message(payload: dict, queue: str) -> BrokerMessage:
    body = events.render(payload).encode()
    return BrokerMessage(queue=queue, body=body, headers={"x-message-id": events.message_id("v", queue, body.decode())},
                         ack_id="1", subscription="s", destination=f"/amq/queue/{queue}", message_id="1",
                         redelivered=False, epoch=1)


def test_the_simulator_sends_every_action_with_the_envelope_and_sparse_attributes():
    _store, sent = sim_payloads()
    assert [p["action"] for p in sent] == ["create", "update", "username_set", "attribute_update", "delete"]
    assert all(p["object_type"] == "offering_user" and p["schema_version"] == 1 for p in sent)
    assert sent[0]["attributes"] == {"full_name": "Alice", "email": "alice@example.org"}  # "" and [] left out


def test_every_payload_decodes_with_schema_version_and_object_type_kept():
    _store, sent = sim_payloads()
    for payload in sent:
        raw = events.render(payload).encode()
        event = decode_payload(raw)
        assert isinstance(event, OfferingUserEvent)
        assert (event.action, event.schema_version, event.object_type) == (payload["action"], 1, "offering_user")
        fast = fast_decode_payload(raw)  # the bridge's path: the unchecked twin, same fields
        assert msgspec.to_builtins(fast) == msgspec.to_builtins(event)
        if "attributes" in payload:
            assert event.attributes == payload["attributes"]


@pytest.mark.parametrize("style", ["subscription", "consumer"])
def test_the_envelope_body_keeps_schema_version_on_both_queue_styles(style):
    store, sent = sim_payloads()
    [offering] = store.offerings
    queue = (f"subscription_{'5' * 32}_offering_{offering}_offering_user" if style == "subscription"
             else f"consumer_{'6' * 32}")
    for payload in sent:
        record = to_record("b", Origin.STOMP, broker_message(payload, queue), NOW)
        assert record.topic_kind == "events", record.value
        body = msgspec.json.decode(record.value)["body"]  # what an audit reader of the topic sees
        assert body["schema_version"] == 1 and body["object_type"] == "offering_user"
        envelope = envelope_decoder.decode(record.value)
        assert envelope.object_type == "offering_user" and envelope.offering_uuid == offering
        assert envelope.body.schema_version == 1


def test_an_event_without_the_envelope_still_decodes_and_omits_it():
    _store, sent = sim_payloads()
    bare = {k: v for k, v in sent[1].items() if k not in ("object_type", "schema_version")}
    event = decode_payload(events.render(bare).encode())
    assert event.schema_version is None and event.object_type is None
    assert b"schema_version" not in msgspec.json.encode(event)  # omit_defaults: absent stays absent


def test_the_fold_is_the_same_with_and_without_the_envelope_keys():
    """The extra keys are carried for audit, they do not change what is folded."""
    store, sent = sim_payloads()
    [offering] = store.offerings
    link = Link(name="b-to-a", source=Endpoint("b", offering), target=Endpoint("a", "a" * 32))
    [user] = [u for u in store.users.values() if u.username == "alice"]
    ou_uuid = sent[0]["offering_user_uuid"]
    snapshot = SnapshotPage(snapshot_id="s", offering_uuid=offering, states=["OK", "Requested"], page=1, last=True,
                            total=1, users=[OfferingUserRecord(uuid=ou_uuid, user_uuid=user.uuid, user_username="alice",
                                                               offering_uuid=offering, username="", state="Requested")])

    def history(strip: bool) -> list[Envelope]:
        out = [Envelope(event_id="snap", site="b", origin=Origin.SNAPSHOT, offering_uuid=offering,
                        received_at=NOW, body=snapshot)]
        for n, payload in enumerate(sent[:3]):  # create, update, username_set
            if strip:
                payload = {k: v for k, v in payload.items() if k not in ("object_type", "schema_version")}
            out.append(Envelope(event_id=f"e{n}", site="b", origin=Origin.STOMP, offering_uuid=offering,
                                received_at=NOW, body=decode_payload(events.render(payload).encode())))
        return out

    with_keys, without = empty_state(), empty_state()
    fold_many(with_keys, [link], history(strip=False))
    fold_many(without, [link], history(strip=True))
    assert as_dict(with_keys) == as_dict(without)
    assert desired(with_keys.rows[row_key("b-to-a", "alice")]) == "alice_b"

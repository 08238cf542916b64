"""How this directory was made (kept as a record; tests never run it).

The records of 2026-11-21: the tree at commit 89aadbf (``git archive 89aadbf | tar -x -C
/tmp/usync-89aadbf``), its bridge's ``to_record`` and its ``streams/schema.py``; run from
that tree as ``python made_by.py OUT_DIR``. Three body kinds (no rejection yet), outcomes of
five actions (no dead-lettered, no ``response``), dead letters of the bridge only (no
``topic``/``partition``/``offset``), no correction requests yet, rows as msgpack maps of a
Row without observation times.
"""

import base64
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from bridges.records import to_record
from bridges.source import BrokerMessage
from streams.core.table import Row
from streams.schema import (Envelope, Lookup, OfferingUserRecord, Outcome, OutcomeAction, SnapshotPage, Source,
                            envelope_encoder)

AT = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
OFFERING_B, OFFERING_A = "9e8d7c6b5a4f43218765fedcba987654", "4a3b2c1d0e9f48a7b6c5d4e3f2a1b0c9"
QUEUE = f"subscription_5d1c0e6f7a8b4c9daa0b1c2d3e4f5a6b_offering_{OFFERING_B}_offering_user"
OU_B, OU_A, USER = "0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01", "2b4d6f8a0c1e43a5b7c9d0e2f4a6b8c1", "1a2b3c4d5e6f40718293a4b5c6d7e8f9"


def message(body, message_id):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return BrokerMessage(queue=QUEUE, body=body, headers={"x-message-id": message_id, "content-type": "application/json",
                                                          "persistent": "true"},
                         ack_id="1", subscription="sub-0", destination=f"/amq/queue/{QUEUE}", message_id="T_1",
                         redelivered=False, epoch=1)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    common = {"offering_user_uuid": OU_B, "user_uuid": USER, "offering_uuid": OFFERING_B}
    payloads = [("create", {**common, "action": "create", "username": "", "state": "Requested",
                            "runtime_state": "Active", "attributes": {"email": "alice@example.org"}}),
                ("update", {**common, "action": "update", "username": "alice", "state": "OK",
                            "runtime_state": "Active", "changed_fields": ["username", "state"]}),
                ("username_set", {**common, "action": "username_set", "username": "alice", "state": 5,
                                  "resource_backend_ids": ["acc1"]}),
                ("attribute_update", {**common, "action": "attribute_update", "username": "alice",
                                      "changed_attributes": ["email"], "attributes": {"email": "a@b.org"}}),
                ("delete", {**common, "action": "delete", "username": "alice"})]
    index = {"events": [], "outcomes": [], "dlq": [], "rows": []}
    events = []
    for n, (action, payload) in enumerate(payloads):
        transport = Source.AMQP if action == "attribute_update" else Source.STOMP
        events.append(to_record("b", transport, message(payload, f"{n:032x}"), AT + timedelta(seconds=n)).value)
        index["events"].append(f"broker event: {action} ({transport.value})")
    user = OfferingUserRecord(uuid=OU_A, user_uuid=USER, user_username="alice", offering_uuid=OFFERING_A,
                              username="alice_old", state="OK")
    events.append(envelope_encoder.encode(Envelope(
        event_id="d" * 32 + ":1", site="a", source=Source.SNAPSHOT, offering_uuid=OFFERING_A, received_at=AT,
        body=SnapshotPage(snapshot_id="d" * 32, offering_uuid=OFFERING_A, states=["OK", "Creating", "Requested"],
                          page=1, last=True, total=1, users=[user]))))
    index["events"].append("snapshot page")
    for status, body in ((200, user), (404, None)):
        events.append(envelope_encoder.encode(Envelope(
            event_id=f"{status:032x}", site="a", source=Source.LOOKUP, offering_uuid=OFFERING_A, received_at=AT,
            body=Lookup(offering_user_uuid=OU_A, status=status, user=body))))
        index["events"].append(f"lookup answered {status}")
    outcomes = []
    for action in OutcomeAction:
        outcomes.append(envelope_encoder.encode(Outcome(
            link="hpc", user_username="alice", action=action, desired="alice", observed="alice_old",
            http_status=200 if action is OutcomeAction.CORRECTED else None, offering_user_uuid=OU_A, at=AT)))
        index["outcomes"].append(f"outcome: {action.value}")
    dlq = [to_record("b", Source.STOMP, message(b"\x00 not json", "f" * 32), AT).value]
    index["dlq"].append("bridge dead letter: not JSON")
    row = Row(link="hpc", user_username="alice", b_offering_user_uuid=OU_B, b_username="alice", b_state="OK",
              b_event_id="1" * 32, a_offering_user_uuid=OU_A, a_username="alice_old", a_state="OK", a_event_id="2" * 32)
    rows = [{"what": "map (2026-11-21: no observation times)", "format": "map", "key": "hpc:alice",
             "value": base64.b64encode(msgspec.msgpack.encode(row)).decode(), "row": msgspec.to_builtins(row)}]
    index["rows"].append(rows[0]["what"])
    for topic, values in (("events", events), ("outcomes", outcomes), ("dlq", dlq)):
        (out / f"{topic}.jsonl").write_bytes(b"".join(v + b"\n" for v in values))
    (out / "rows.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

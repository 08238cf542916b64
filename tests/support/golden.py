"""Golden records: one of every record kind usync writes today, made by the code that writes it.

    .local/venv/bin/python -m tests.support.golden tests/data/records/<date>

writes, into a new directory named for the day, one JSON-lines file per topic whose every
line is a record value exactly as it is on the topic (``events``, ``outcomes``, ``dlq``, the
internal ``corrections``), ``rows.jsonl`` (a table row in each stored format, base64, with the
row it decodes to) and ``index.json`` (what each line is). Directories are never edited once
committed: they are the records of their day, which every later tree must still decode
(tests/unit/test_golden_records.py). Make a new one when a format or a kind is added.

The envelopes of broker events and the bridge's dead letters come from the bridge's own
``bridges.records.to_record``; lookups and rejections from ``streams.stages.facts``; the
worker's dead letters from ``streams.stages.dead_letter.DeadLetters``; rows from
``streams.adapters.faust.rowcodec``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec

from bridges.records import to_record
from bridges.transports.base import BrokerMessage
from streams.adapters.faust.rowcodec import ROWS, _MapRow
from streams.contract.schema import (
    CorrectionRequest,
    Envelope,
    Lookup,
    OfferingUserRecord,
    Origin,
    Outcome,
    OutcomeAction,
    Rejection,
    SnapshotPage,
    envelope_decoder,
    envelope_encoder,
    outcome_encoder,
    request_encoder,
)
from streams.core import Row
from streams.metrics import Metrics
from streams.stages.dead_letter import HANDLER_ERROR, UNDECODABLE, DeadLetters
from streams.stages.facts import lookup_envelope, rejection_envelope

AT = datetime(2026, 12, 6, 9, 30, tzinfo=timezone.utc)
SITE_B, SITE_A, LINK = "b", "a", "hpc"
OFFERING_B, OFFERING_A = "9e8d7c6b5a4f43218765fedcba987654", "4a3b2c1d0e9f48a7b6c5d4e3f2a1b0c9"
SUBSCRIPTION = "5d1c0e6f7a8b4c9daa0b1c2d3e4f5a6b"
QUEUE = f"subscription_{SUBSCRIPTION}_offering_{OFFERING_B}_offering_user"
CONSUMER_QUEUE = "consumer_77aa88bb99cc4dd0aa11bb22cc33dd44"
OU_B, OU_A, USER = "0f8a6a7a0c6b4d9e9a2f3c1b5d7e9f01", "2b4d6f8a0c1e43a5b7c9d0e2f4a6b8c1", "1a2b3c4d5e6f40718293a4b5c6d7e8f9"

Lines = list[tuple[str, bytes]]


def _message(payload: dict[str, Any] | bytes, message_id: str, queue: str = QUEUE) -> BrokerMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"x-message-id": message_id, "content-type": "application/json", "persistent": "true",
               "ack": "T_1@@session-1@@1", "message-id": "T_1@@session-1@@1", "subscription": "sub-0",
               "destination": f"/amq/queue/{queue}", "redelivered": "false"}
    return BrokerMessage(queue=queue, body=body, headers=headers, ack_id="T_1@@session-1@@1", subscription="sub-0",
                         destination=f"/amq/queue/{queue}", message_id="T_1", redelivered=False, epoch=1)


def _payloads() -> list[tuple[str, dict[str, Any]]]:
    """Waldur's five actions as it publishes them (docs: /work/shared/waldur-reference.md)."""
    common = {"offering_user_uuid": OU_B, "user_uuid": USER, "offering_uuid": OFFERING_B,
              "object_type": "offering_user", "schema_version": 1}
    return [
        ("create", {**common, "action": "create", "username": "", "state": "Requested", "runtime_state": "Active",
                    "attributes": {"full_name": "Alice Liddell", "email": "alice@example.org"}}),
        ("update", {**common, "action": "update", "username": "alice", "state": "OK", "runtime_state": "Active",
                    "changed_fields": ["username", "state"]}),
        ("username_set", {**common, "action": "username_set", "username": "alice", "state": 5,
                          "resource_backend_ids": ["acc1"]}),
        ("attribute_update", {**common, "action": "attribute_update", "username": "alice",
                              "changed_attributes": ["email"], "attributes": {"email": "alice@uni.example.org"}}),
        ("delete", {**common, "action": "delete", "username": "alice"}),
    ]


def events() -> Lines:
    lines: Lines = []
    for n, (action, payload) in enumerate(_payloads()):
        origin = Origin.AMQP if action == "attribute_update" else Origin.STOMP
        record = to_record(SITE_B, origin, _message(payload, f"{n:032x}"), AT + timedelta(seconds=n))
        lines.append((f"broker event: {action} ({origin.value}, subscription queue)", record.value))
    consumer = {k: v for k, v in _payloads()[1][1].items() if k != "offering_uuid"}  # the queue names no offering
    record = to_record(SITE_B, Origin.STOMP, _message({**consumer, "offering_uuid": OFFERING_B}, "c" * 32, CONSUMER_QUEUE),
                       AT)
    lines.append(("broker event: update (consumer_<uuid> queue)", record.value))
    a_user = OfferingUserRecord(uuid=OU_A, user_uuid=USER, user_username="alice", offering_uuid=OFFERING_A,
                                username="alice_old", state="OK", runtime_state="Active", modified="2026-12-06T09:00:00Z")
    snapshot = Envelope(event_id="d" * 32 + ":1", site=SITE_A, origin=Origin.SNAPSHOT, offering_uuid=OFFERING_A,
                        received_at=AT, body=SnapshotPage(snapshot_id="d" * 32, offering_uuid=OFFERING_A,
                                                          states=["OK", "Creating", "Requested"], page=1, last=True,
                                                          total=1, users=[a_user]))
    lines.append(("snapshot page (reconcile listing)", envelope_encoder.encode(snapshot)))
    lines.append(("lookup answered 200", lookup_envelope(SITE_A, OFFERING_A, OU_A, 200, a_user, AT)[1]))
    lines.append(("lookup answered 404", lookup_envelope(SITE_A, OFFERING_A, "e" * 32, 404, None, AT)[1]))
    rejection = Rejection(link=LINK, user_username="alice", offering_user_uuid=OU_A, desired="root",
                          observed="alice_old", status=400)
    lines.append(("rejection (A refused a PATCH)", rejection_envelope(SITE_A, OFFERING_A, rejection, AT)[1]))
    return lines


class _ListedSite:
    """A site whose listing is one page holding A's alice (the reconciler's port)."""

    def __init__(self, user: OfferingUserRecord) -> None:
        self.user = user

    async def list_offering_users(self, offering: str, states: list[str]):
        yield 1, 1, [self.user], True


def history() -> tuple[Lines, Lines]:
    """What a reconcile pass writes since the listings topic: the page (listings topic), its
    summary, and what comparing it with a table found (events topic), by the code that writes them."""
    from streams.contract.config import Endpoint, Link
    from streams.core import empty_state, fold_by_link, fold_many
    from streams.core.listing import Listings
    from streams.stages.reconcile import Reconcile

    a_user = OfferingUserRecord(uuid=OU_A, user_uuid=USER, user_username="alice", offering_uuid=OFFERING_A,
                                username="alice_drift", state="OK", runtime_state="Active")
    link = Link(name=LINK, source=Endpoint(SITE_B, OFFERING_B), target=Endpoint(SITE_A, OFFERING_A))
    listings: Lines = []
    events_: Lines = []

    async def to_listings(_key: bytes, value: bytes) -> None:
        listings.append(("listing page (listings topic)", value))

    async def to_events(_key: bytes, value: bytes) -> None:
        events_.append(("listing summary (one per listing and pass)", value))

    class Clock:
        def now(self) -> datetime:
            return AT

    reconcile = Reconcile([link], {SITE_A: _ListedSite(a_user)}, Metrics(), to_events, 900, Clock(),
                          emit_listing=to_listings)
    asyncio.run(reconcile.snapshot(link, SITE_A, OFFERING_A, ["OK", "Creating", "Requested"], to_listings))
    state = empty_state()  # a table that holds alice as "alice" on A, and bob, whom the listing lacks
    earlier = msgspec.structs.replace(a_user, username="alice")
    bob = OfferingUserRecord(uuid="3" * 32, user_uuid="4" * 32, user_username="bob", offering_uuid=OFFERING_A,
                             username="bob", state="OK")
    before = AT - timedelta(hours=1)
    fold_many(state, [link], [Envelope(event_id="5" * 32, site=SITE_A, origin=Origin.LOOKUP, offering_uuid=OFFERING_A,
                                       received_at=before, body=Lookup(offering_user_uuid=uid, status=200, user=u))
                              for uid, u in ((OU_A, earlier), ("3" * 32, bob))])
    compare = Listings()
    page = envelope_decoder.decode(listings[0][1])
    found = fold_by_link(state, [link], [(LINK, page)], compare)
    complete = compare.take_complete()
    gone = [fact for row in list(state.rows.values()) for fact in compare.unlisted(state, row, complete)]
    events_ += [("listed (a reconcile difference)", envelope_encoder.encode(f)) for f in found.facts]
    events_ += [("unlisted (a user a listing lacked)", envelope_encoder.encode(f)) for f in gone]
    return events_, listings


def checkpoints() -> Lines:
    """One partition's checkpoint: a part and its manifest (streams.core.checkpoint)."""
    from streams.core.checkpoint import CheckpointManifest, checkpoint_encoder, parts_of

    row = rows_made()[1][3]
    [part] = parts_of("6" * 32, 2, [row], [], previous=-1)
    manifest = CheckpointManifest(checkpoint_id="6" * 32, partition=2, instant=AT, covers={0: 1207, 1: 88},
                                  parts=[41], rows=1, links=[LINK], marks={f"{LINK}:target": 1_765_013_400_000_000})
    return [("checkpoint part", checkpoint_encoder.encode(part)),
            ("checkpoint manifest", checkpoint_encoder.encode(manifest))]


def outcomes() -> Lines:
    base = dict(link=LINK, user_username="alice", cause_event_id="1" * 32, offering_user_uuid=OU_A, at=AT)
    made = {
        OutcomeAction.CORRECTED: Outcome(**base, action=OutcomeAction.CORRECTED, desired="alice", observed="alice_old",
                                         http_status=200),
        OutcomeAction.ALREADY_EQUAL: Outcome(**base, action=OutcomeAction.ALREADY_EQUAL, desired="alice",
                                             observed="alice"),
        OutcomeAction.SKIPPED: Outcome(**base, action=OutcomeAction.SKIPPED, desired="alice", observed=None,
                                       reason="covered by a later live verification"),
        OutcomeAction.REJECTED: Outcome(**base, action=OutcomeAction.REJECTED, desired="root", observed="alice_old",
                                        http_status=400, reason="PATCH answered HTTP 400",
                                        response='{"username": ["This username is reserved and cannot be used."]}'),
        OutcomeAction.GAVE_UP: Outcome(**base, action=OutcomeAction.GAVE_UP, desired="alice", observed=None,
                                       http_status=503, attempts=8,
                                       reason="a: PATCH gave up after 8 attempts (HTTP 503)"),
        OutcomeAction.DEAD_LETTERED: Outcome(**base, action=OutcomeAction.DEAD_LETTERED, desired="alice",
                                             observed=None, reason="handler-error: ValidationError: Object missing"),
    }
    missing = set(OutcomeAction) - made.keys()
    if missing:
        raise SystemExit(f"tests/support/golden.py: add an outcome for {sorted(a.value for a in missing)}")
    return [(f"outcome: {action.value}", outcome_encoder.encode(o)) for action, o in made.items()]


def dead_letters() -> Lines:
    lines: Lines = []
    for what, body in (("not JSON", b"\x00 not json"), ("missing keys", b'{"action": "update"}')):
        record = to_record(SITE_B, Origin.STOMP, _message(body, "f" * 31 + str(len(lines))), AT)
        lines.append((f"bridge dead letter: {what}", record.value))
    letters: list[bytes] = []

    async def emit(_key: bytes, value: bytes) -> None:
        letters.append(value)

    worker = DeadLetters(emit, Metrics())
    asyncio.run(worker.send("usync-by-link", 3, 1207, b"\x00 garbage", UNDECODABLE, "not msgpack"))
    asyncio.run(worker.send("usync-corrections", 1, 88, b'{"link":"hpc","user_username":"alice"}', HANDLER_ERROR,
                            "ValidationError: Object missing required field `uuid`"))
    lines += [("worker dead letter: undecodable", letters[0]), ("worker dead letter: handler-error", letters[1])]
    return lines


def corrections() -> Lines:
    full = CorrectionRequest(link=LINK, user_username="alice", a_offering_user_uuid=OU_A, b_offering_user_uuid=OU_B,
                             desired="alice", cause_event_id="1" * 32, observed_at=1_765_013_400_000_000,
                             b_read_at=1_765_013_400_000_000)
    bare = CorrectionRequest(link=LINK, user_username="bob")
    return [("correction request: every field", request_encoder.encode(full)),
            ("correction request: only the key's fields", request_encoder.encode(bare))]


def rows_made() -> list[tuple[str, str, bytes, Row]]:
    """(format, what, stored bytes, row) of a row in each format a store may hold: v2
    (converged, and with a tail), the full array (2026-12), the map (before)."""
    t = 1_765_013_400_000_000
    converged = Row(link=LINK, user_username="alice", b_offering_user_uuid=OU_B, b_username="alice", b_state="OK",
                    b_event_id="1" * 32, b_observed_at=t, b_username_at=t, b_state_at=t, b_read_at=t,
                    a_offering_user_uuid=OU_A, a_username="alice", a_state="OK", a_event_id="2" * 32,
                    a_observed_at=t + 14, a_username_at=t + 14, a_state_at=t + 14)
    drifted = msgspec.structs.replace(converged, a_username="alice_old", a_username_at=t - 5_000_000, b_restricted=True,
                                      rejected_desired="root", rejected_observed="alice_old", rejected_at=t,
                                      rejected_count=2)
    made = [("v2", "v2, converged", ROWS.encode(converged), converged),
            ("v2", "v2, drifted, restricted, rejected", ROWS.encode(drifted), drifted),
            ("array", "full array (2026-12)", msgspec.msgpack.encode(drifted), drifted),
            ("map", "map (before 2026-12)", msgspec.msgpack.encode(_MapRow(**msgspec.structs.asdict(drifted))), drifted)]
    return made


def rows() -> list[dict[str, Any]]:
    key = f"{LINK}:alice"
    return [{"what": what, "format": fmt, "key": key, "value": base64.b64encode(raw).decode(),
             "row": msgspec.to_builtins(msgspec.structs.asdict(row))} for fmt, what, raw, row in rows_made()]


def write(directory: Path) -> None:
    if directory.exists():
        raise SystemExit(f"{directory} exists: golden records are never rewritten; name a new directory")
    directory.mkdir(parents=True)
    index: dict[str, list[str]] = {}
    reconciled, listings = history()
    for topic, lines in (("events", events() + reconciled), ("outcomes", outcomes()), ("dlq", dead_letters()),
                         ("corrections", corrections()), ("listings", listings), ("checkpoints", checkpoints())):
        (directory / f"{topic}.jsonl").write_bytes(b"".join(value + b"\n" for _, value in lines))
        index[topic] = [what for what, _ in lines]
    stored = rows()
    (directory / "rows.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in stored))
    index["rows"] = [r["what"] for r in stored]
    (directory / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.support.golden tests/data/records/<date>")
    write(Path(sys.argv[1]))

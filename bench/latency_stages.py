"""Where one change's time goes in usync, stage by stage, from the times the records carry.

For each change made on B the bench notes the wall time of the edit; the simulated A notes
the wall time of the PATCH that makes it equal. The run's topics are switched to
``LogAppendTime`` before the changes (:func:`log_append_time`), so a record's timestamp is
when Kafka appended it (no stage of usync reads record timestamps; ``replay --from`` seeks
by them and is not part of a bench). Afterwards every record is read back and joined per
change:

1. ``B → bridge``: the edit on B until the bridge read B's event (the envelope's
   ``received_at``): the simulator's publisher, RabbitMQ, the bridge's read;
2. ``bridge → Kafka``: until Kafka appended the event (the bridge's batching and linger,
   the produce round trip);
3. ``Kafka → routed``: until the route stage appended it to ``<app>-by-link`` (its fetch,
   the route, its producer's linger);
4. ``routed → correction``: until the fold's correction request for that user was appended
   to ``<app>-corrections`` (faust's fetch, the fold, faust's producer);
5. ``correction → PATCH``: until A took the PATCH (the correct stage's fetch, its GETs of
   B and A, the PATCH);

and, off the path to "A corrected": ``PATCH → outcome`` (the outcomes record) and
``PATCH → echo`` (the bridge reading A's own event of that PATCH).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

STAGES = ("B → bridge", "bridge → Kafka", "Kafka → routed", "routed → correction", "correction → PATCH")
AFTER = ("PATCH → outcome", "PATCH → echo")


@dataclass
class StageClock:
    """Wall times of the changes on B (by B's offering user) and of A's username writes."""

    changed: dict[str, tuple[float, str, str]] = field(default_factory=dict)  # b uuid -> (t, new name, a uuid)
    written: dict[tuple[str, str], float] = field(default_factory=dict)  # (a uuid, name) -> first t

    def hook(self, a: Any) -> None:
        store = a.store
        original = store.set_username

        def set_username(ref: Any, username: Any) -> Any:
            ou = original(ref, username)
            self.written.setdefault((ou.uuid, username or ""), time.time())
            return ou

        store.set_username = set_username

    def change(self, b_uuid: str, a_uuid: str, username: str) -> None:
        self.changed[b_uuid] = (time.time(), username, a_uuid)


async def log_append_time(bootstrap: str, names: list[str]) -> None:
    """Kafka stamps these topics' records with their append time, their other settings kept
    (alter_configs replaces a topic's whole dynamic config, so those are read first)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        described = await admin.describe_configs(resources)
        altered = []
        for response in described:
            for _code, _msg, _type, name, entries in response.resources:
                dynamic = {entry[0]: entry[1] for entry in entries if entry[4] == 1}  # DYNAMIC_TOPIC_CONFIG
                dynamic["message.timestamp.type"] = "LogAppendTime"
                altered.append(ConfigResource(ConfigResourceType.TOPIC, name, configs=dynamic))
        await admin.alter_configs(altered)
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[float, dict]]:
    """Every record of ``topic`` as (append time in s, JSON value)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while not consumer.assignment():  # without a group, every partition once the metadata has the topic
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic}: no partitions in Kafka's metadata after {timeout:.0f} s")
            await asyncio.sleep(0.1)  # the assignment follows a metadata update; nothing to await
        tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[float, dict]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=20_000)).values():
                for r in records:
                    try:
                        out.append((r.timestamp / 1000, msgspec.json.decode(r.value)))
                    except (msgspec.DecodeError, TypeError):
                        continue
        return out
    finally:
        await consumer.stop()


def _first(index: dict, key: Any, value: Any) -> None:
    index.setdefault(key, value)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _envelopes(records: list[tuple[float, dict]]) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(site, offering user uuid, username) -> (received by the bridge, appended): each event's
    first copy. A record is one envelope (the events topic) or a JSON array of them (the
    route stage packs a batch's envelopes of one link into one ``<app>-by-link`` record)."""
    read: dict[tuple[str, str, str], tuple[float, float]] = {}
    for appended, value in records:
        for envelope in value if isinstance(value, list) else [value]:
            body = envelope.get("body") or {}
            if body.get("kind") == "event" and body.get("username"):
                _first(read, (envelope["site"], body["offering_user_uuid"], body["username"]),
                       (_ts(envelope["received_at"]), appended))
    return read


def per_change(clock: StageClock, events: list[tuple[float, dict]], routed: list[tuple[float, dict]],
               corrections: list[tuple[float, dict]], outcomes: list[tuple[float, dict]]) -> list[dict[str, float]]:
    """Each change's stage durations in seconds (changes whose chain is incomplete are left out)."""
    read, by_link = _envelopes(events), _envelopes(routed)
    requested: dict[tuple[str, str], float] = {}  # (b uuid, desired) -> appended
    for appended, request in corrections:
        if request.get("b_offering_user_uuid") and request.get("desired"):
            _first(requested, (request["b_offering_user_uuid"], request["desired"]), appended)
    outcome: dict[tuple[str, str], float] = {}
    for appended, record in outcomes:
        if record.get("action") == "corrected":
            _first(outcome, (record.get("offering_user_uuid", ""), record.get("desired") or ""), appended)
    rows = []
    for b_uuid, (changed, name, a_uuid) in clock.changed.items():
        b_event, route = read.get(("b", b_uuid, name)), by_link.get(("b", b_uuid, name))
        asked, patched = requested.get((b_uuid, name)), clock.written.get((a_uuid, name))
        if b_event is None or route is None or asked is None or patched is None:
            continue
        row = {"B → bridge": b_event[0] - changed, "bridge → Kafka": b_event[1] - b_event[0],
               "Kafka → routed": route[1] - b_event[1], "routed → correction": asked - route[1],
               "correction → PATCH": patched - asked, "total": patched - changed}
        if (done := outcome.get((a_uuid, name))) is not None:
            row["PATCH → outcome"] = done - patched
        if (echo := read.get(("a", a_uuid, name))) is not None:
            row["PATCH → echo"] = echo[0] - patched
        rows.append(row)
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Per stage: (p50, p99) in seconds."""
    out = {}
    for stage in (*STAGES, "total", *AFTER):
        values = sorted(r[stage] for r in rows if stage in r)
        if values:
            p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
            out[stage] = (statistics.median(values), p99)
    return out

"""``usync tail``: audit records from the outcomes, events or DLQ topic as JSON lines.

Filters: link (outcomes name it; events are routed with the configured links; dead
letters match a link's sites), user (user_username, user_uuid or offering_user_uuid),
and time (the record's own time: ``at``, ``received_at``). ``follow`` keeps reading
new records until interrupted; otherwise reading stops at the end offsets taken at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import msgspec
from aiokafka.structs import ConsumerRecord

from streams.contract.config import Config
from streams.core.routing import compile_routes
from streams.ops.kafka_read import aware, partitions_of, reader, start_offsets
from streams.ops.topics import topic_names
from streams.contract.schema import (
    Body,
    DeadLetter,
    Envelope,
    Listed,
    ListingSummary,
    Unlisted,
    Lookup,
    Rejection,
    OfferingUserEvent,
    Outcome,
    SnapshotPage,
    normalize_uuid,
)

_outcome = msgspec.json.Decoder(Outcome)
_envelope = msgspec.json.Decoder(Envelope)
_dead = msgspec.json.Decoder(DeadLetter)
_meta = msgspec.json.Encoder()


@dataclass
class TailFilter:
    links: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    since: datetime | None = None
    until: datetime | None = None

    def in_time(self, moment: datetime) -> bool:
        moment = aware(moment)
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)


@dataclass
class Facts:
    """What a filter needs to know of one record."""

    time: datetime
    links: set[str]
    users: set[str]
    text: str = ""  # dead letters: the raw bytes, searched for the user


def _envelope_users(body: Body) -> set[str]:
    if isinstance(body, Rejection | Unlisted):
        return {body.user_username, normalize_uuid(body.offering_user_uuid)}
    if isinstance(body, Listed):
        return {body.user.user_username, normalize_uuid(body.user.uuid), normalize_uuid(body.user.user_uuid)}
    if isinstance(body, ListingSummary):
        return set()
    if isinstance(body, OfferingUserEvent):
        return {normalize_uuid(body.offering_user_uuid), normalize_uuid(body.user_uuid)}
    if isinstance(body, SnapshotPage):
        return {x for u in body.users for x in (u.user_username, normalize_uuid(u.uuid), normalize_uuid(u.user_uuid))}
    users = {normalize_uuid(body.offering_user_uuid)}
    if body.user is not None:
        users |= {body.user.user_username, normalize_uuid(body.user.user_uuid)}
    return users


def facts_reader(kind: str, config: Config) -> Callable[[bytes], Facts]:
    """A function from a record value of topic ``kind`` to the facts the filters use."""
    routes = compile_routes(config.links)
    sites_of = {link.name: {link.source.site, link.target.site} for link in config.links}

    def outcome(value: bytes) -> Facts:
        o = _outcome.decode(value)
        return Facts(o.at, {o.link}, {o.user_username, normalize_uuid(o.offering_user_uuid)} - {""})

    def event(value: bytes) -> Facts:
        e = _envelope.decode(value)
        return Facts(e.received_at, {link.name for link, _ in routes.of_envelope(e)}, _envelope_users(e.body))

    def dead(value: bytes) -> Facts:
        d = _dead.decode(value)
        raw = d.raw.decode(errors="replace")
        return Facts(d.received_at, {n for n, sites in sites_of.items() if d.site in sites}, set(), raw)

    return {"outcomes": outcome, "events": event, "dlq": dead}[kind]


def matches(facts: Facts, filt: TailFilter) -> bool:
    if not filt.in_time(facts.time):
        return False
    if filt.links and not (facts.links & filt.links):
        return False
    if filt.users:
        wanted = {normalize_uuid(u) if len(u.replace("-", "")) == 32 else u for u in filt.users}
        if not (facts.users & wanted or any(w in facts.text for w in filt.users)):
            return False
    return True


def render(message: ConsumerRecord, with_meta: bool) -> bytes:
    if not with_meta:
        return message.value
    return _meta.encode({
        "topic": message.topic, "partition": message.partition, "offset": message.offset,
        "timestamp": message.timestamp, "key": (message.key or b"").decode(errors="replace"),
        "record": msgspec.Raw(message.value),
    })


async def tail(config: Config, kind: str, filt: TailFilter, out: IO[str], *, follow: bool = False,
               limit: int | None = None, with_meta: bool = False, stop: asyncio.Event | None = None) -> int:
    """Write matching records as JSON lines to ``out``; return how many were written."""
    topic = topic_names(config)[kind]
    read_facts = facts_reader(kind, config)
    written = 0
    stop = stop or asyncio.Event()
    async with reader(config) as consumer:
        partitions = await partitions_of(consumer, topic)
        while follow and not partitions and not stop.is_set():
            # Following from before the first worker starts: wait for it to create the topic.
            await asyncio.sleep(1.0)
            partitions = await partitions_of(consumer, topic)
        if not partitions:
            raise SystemExit(f"usync tail: topic {topic} does not exist")
        consumer.assign(partitions)
        for tp, offset in (await start_offsets(consumer, partitions, filt.since)).items():
            consumer.seek(tp, offset)
        end = await consumer.end_offsets(partitions)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for messages in batches.values():
                for message in _bounded(messages, end, follow):
                    if matches(_safe(read_facts, message.value), filt):
                        out.write(render(message, with_meta).decode(errors="replace") + "\n")
                        written += 1
                        if limit is not None and written >= limit:
                            out.flush()
                            return written
            out.flush()
            if not follow and await _at_end(consumer, partitions, end):
                return written
    return written


def _bounded(messages: Iterable[ConsumerRecord], end: dict[Any, int], follow: bool) -> Iterable[ConsumerRecord]:
    from aiokafka import TopicPartition

    for m in messages:
        if follow or m.offset < end[TopicPartition(m.topic, m.partition)]:
            yield m


async def _at_end(consumer: Any, partitions: list[Any], end: dict[Any, int]) -> bool:
    for tp in partitions:
        if await consumer.position(tp) < end[tp]:
            return False
    return True


def _safe(read: Callable[[bytes], Facts], value: bytes) -> Facts:
    """A record that does not decode (a stray writer) matches nothing but a time-free, filter-free tail."""
    try:
        return read(value)
    except msgspec.DecodeError:
        return Facts(datetime.min.replace(tzinfo=None), set(), set())

"""``usync index`` (the user index, kept) and ``usync history USER`` (one user's timeline from it).

The indexer (``streams.core.user_index``) reads the events, outcomes and DLQ topics in
order with manual assignment, commits its positions as group ``<app_id>-index`` once the
index records they produced are acknowledged, and on a restart refolds (silently) from the
beginning up to those positions to have the table they left, then goes on. ``--once``
stops at the end offsets taken at start.

``history`` reads only the partition of the user-index topic that the user's key is on
(between ``since`` and ``until`` by Kafka's time index), then the facts it names, one read
each, and merges them in observation order. It never calls a Waldur API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.structs import OffsetAndMetadata

from streams.adapters.kafka.client import client_options
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.readers import partitions_of, reader
from streams.adapters.kafka.topics import ensure_topics, producer_codec
from streams.contract.config import Config
from streams.contract.schema import (
    IndexAlias, IndexEntry, dead_letter_decoder, envelope_decoder, index_decoder, normalize_uuid, outcome_decoder,
)
from streams.core.user_index import Indexed, Indexer

log = logging.getLogger("usync.index")

ENCODE = msgspec.json.Encoder().encode
FETCH = dict(max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
#: history seeks from fact to fact: a fetch must not wait for more data (aiokafka's 500 ms)
LOOKUP = dict(max_partition_fetch_bytes=1 << 20, fetch_max_wait_ms=5)


def _kinds(config: Config) -> dict[str, str]:
    kafka = config.kafka
    return {kafka.events_topic: "events", kafka.outcomes_topic: "outcomes", kafka.dlq_topic: "dlq"}


def index_records(indexer: Indexer, kind: str, value: bytes, partition: int, offset: int) -> Indexed:
    """What one record of a permanent topic adds to the user index (nothing if it is not usync's)."""
    try:
        if kind == "events":
            return indexer.event(envelope_decoder.decode(value), partition, offset)
        if kind == "outcomes":
            return indexer.outcome(outcome_decoder.decode(value), partition, offset)
        return indexer.dead_letter(dead_letter_decoder.decode(value), partition, offset)
    except msgspec.DecodeError:
        return []  # a stray writer's record: the worker dead-lettered it


@dataclass
class IndexRun:
    records: int = 0  # permanent-topic records read
    entries: int = 0  # index records written
    bytes: int = 0
    seconds: float = 0.0


async def run_index(config: Config, *, once: bool = False, progress: Callable[[IndexRun], None] | None = None,
                    batch: int = 10_000) -> IndexRun:
    """Keep the user index (see the module's docstring); with ``once``, up to the end offsets at start."""
    await ensure_topics(config)
    kinds, group = _kinds(config), f"{config.app_id}-index"
    options = client_options(config)
    sender = RecordSender(options, "index", compression=producer_codec(config.kafka.compression.events))
    await sender.start()
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False, **FETCH)
    await consumer.start()
    done, began = IndexRun(), time.perf_counter()
    try:
        tps = [tp for topic in kinds for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
        indexer = Indexer(config.links)
        await _catch_up(config, consumer, indexer, committed)
        for tp in tps:
            consumer.seek(tp, committed[tp])
        end = await consumer.end_offsets(tps)
        topic = config.kafka.user_index_topic
        merge = _Merge(tps)
        partition_of = key_partitioner(len(await partitions_of(consumer, topic)) or config.kafka.index_partitions)
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            if not once:
                end = await consumer.end_offsets(tps)
            for tp, messages in fetched.items():
                merge.add(tp, messages)
            at_end = {tp: await consumer.position(tp) >= end[tp] for tp in tps}
            ready = merge.take(at_end)
            out: list[tuple[bytes, bytes]] = []
            for m in ready:
                out.extend((key.encode(), ENCODE(record)) for key, record
                           in index_records(indexer, kinds[m.topic], m.value or b"", m.partition, m.offset))
            done.records += len(ready)
            if out:
                await sender.send_bulk(topic, out, partition_of)
                done.entries += len(out)
                done.bytes += sum(len(k) + len(v) for k, v in out)
            if ready:
                await consumer.commit(merge.committable())
            if progress:
                progress(done)
            if once and not merge.buffered() and all(at_end.values()) and not fetched:
                break
    finally:
        done.seconds = time.perf_counter() - began
        await consumer.stop()
        await sender.stop()
    return done


class _Merge:
    """The permanent topics' partitions merged in write order (Kafka's timestamps), so that the
    indexer folds facts of different offerings in the order the worker saw them: a record is
    taken once every partition that may still hold an earlier one has been read past it."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.pending: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        self.done: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, messages: list[Any]) -> None:
        self.pending[tp].extend(messages)

    def buffered(self) -> int:
        return sum(len(p) for p in self.pending.values())

    def take(self, at_end: dict[TopicPartition, bool]) -> list[Any]:
        """Every record no unread one can precede: up to the earliest newest timestamp of the
        partitions not at their end."""
        horizons = [p[-1].timestamp for tp, p in self.pending.items() if p and not at_end[tp]]
        if any(not p and not at_end[tp] for tp, p in self.pending.items()):
            horizons.append(-1)  # a partition with nothing read yet may hold anything
        horizon = min(horizons) if horizons else None
        ready = []
        for tp, p in self.pending.items():
            cut = len(p) if horizon is None else next((i for i, m in enumerate(p) if m.timestamp > horizon), len(p))
            ready.extend(p[:cut])
            del p[:cut]
        ready.sort(key=lambda m: (m.timestamp, m.topic, m.partition, m.offset))
        for m in ready:
            self.done[TopicPartition(m.topic, m.partition)] = m.offset + 1
        return ready

    def committable(self) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: OffsetAndMetadata(offset, "") for tp, offset in self.done.items()}


async def _catch_up(config: Config, consumer: AIOKafkaConsumer, indexer: Indexer,
                    committed: dict[TopicPartition, int]) -> None:
    """Refold the events topic up to the committed positions: the table the index was at."""
    events = [tp for tp in committed if tp.topic == config.kafka.events_topic and committed[tp] > 0]
    if not events:
        return
    log.info("user index: refolding %d events up to where it stopped", sum(committed[tp] for tp in events))
    for tp in events:
        consumer.seek(tp, 0)
    remaining = set(events)
    while remaining:
        for tp, messages in (await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)).items():
            for m in messages:
                if m.offset < committed[tp]:
                    try:
                        indexer.event(envelope_decoder.decode(m.value), tp.partition, m.offset)
                    except msgspec.DecodeError:
                        pass
            if messages[-1].offset + 1 >= committed[tp]:
                remaining.discard(tp)


# -- one user's history ----------------------------------------------------------------------


@dataclass
class Line:
    """One fact of a user's timeline: the index entry and the record it names."""

    entry: IndexEntry
    record: Any  # Envelope, Outcome or DeadLetter

    def builtins(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self.entry), "record": msgspec.to_builtins(self.record)}


def key_partitioner(partitions: int) -> Callable[[bytes], int]:
    """The default partitioner's answer for a user-index key, each key's remembered (murmur2
    is pure Python, ~4 µs a key; an index has a key per user and uuid)."""
    known: dict[bytes, int] = {}

    def partition_of(key: bytes) -> int:
        found = known.get(key)
        if found is None:
            found = known[key] = (murmur2(key) & 0x7FFFFFFF) % partitions
        return found
    return partition_of


def index_partition(key: str, partitions: int) -> int:
    """The user-index partition a key is on (the producers' default partitioner)."""
    every = list(range(partitions))
    return DefaultPartitioner()(key.encode(), every, every)


async def _index_of(consumer: AIOKafkaConsumer, config: Config, key: str, since: datetime | None,
                    until: datetime | None, partitions: int) -> list[Any]:
    tp = TopicPartition(config.kafka.user_index_topic, index_partition(key, partitions))
    consumer.assign([tp])
    first, last = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
    if since is not None:
        found = (await consumer.offsets_for_times({tp: int(since.timestamp() * 1000)})).get(tp)
        first = found.offset if found else last
    if until is not None:
        found = (await consumer.offsets_for_times({tp: int(until.timestamp() * 1000) + 1})).get(tp)
        last = found.offset if found else last
    consumer.seek(tp, first)
    wanted, out = key.encode(), []
    while first < last:
        records = (await consumer.getmany(tp, timeout_ms=2000, max_records=50_000)).get(tp, [])
        if not records:
            break
        out.extend(index_decoder.decode(m.value) for m in records if m.key == wanted and m.offset < last)
        first = records[-1].offset + 1
    return out


async def history(config: Config, who: str, *, link: str | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> list[Line]:
    """Every indexed fact about ``who`` (a user_username, user_uuid or offering-user uuid), in observation order."""
    topics = {"events": config.kafka.events_topic, "outcomes": config.kafka.outcomes_topic,
              "dlq": config.kafka.dlq_topic}
    async with reader(config, **LOOKUP) as consumer:
        partitions = len(await partitions_of(consumer, config.kafka.user_index_topic)) or config.kafka.index_partitions
        users = {who}
        if len(who.replace("-", "")) == 32:  # a uuid: the users it names
            aliases = await _index_of(consumer, config, normalize_uuid(who), None, None, partitions)
            users = {a.user for a in aliases if isinstance(a, IndexAlias)} or users
        entries = [e for user in sorted(users) for e in await _index_of(consumer, config, user, since, until, partitions)
                   if isinstance(e, IndexEntry) and (link is None or e.link == link)]
        lines = await _facts(consumer, topics, entries)
    return sorted(lines, key=lambda line: (line.entry.at, line.entry.topic != "events", line.entry.offset))


async def _facts(consumer: AIOKafkaConsumer, topics: dict[str, str], entries: list[IndexEntry]) -> list[Line]:
    """The record each entry names, read once per distinct place (a seek and one fetch each:
    ~10 ms; six readers at once measured no faster, each consumer's start costs as much)."""
    decoders = {"events": envelope_decoder, "outcomes": outcome_decoder, "dlq": dead_letter_decoder}
    places = sorted({(e.topic, e.partition, e.offset) for e in entries})
    found: dict[tuple[str, int, int], Any] = {}
    if places:
        consumer.assign(list({TopicPartition(topics[t], p) for t, p, _ in places}))
    for topic, partition, offset in places:
        tp = TopicPartition(topics[topic], partition)
        consumer.seek(tp, offset)
        records = (await consumer.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
        if records and records[0].offset == offset:
            found[(topic, partition, offset)] = decoders[topic].decode(records[0].value)
    return [Line(e, found[(e.topic, e.partition, e.offset)]) for e in entries if (e.topic, e.partition, e.offset) in found]


def summary(record: Any) -> str:
    """What a fact said, in a few words."""
    body = getattr(record, "body", None)
    if body is None:  # an outcome or a dead letter
        if hasattr(record, "action"):
            said = f"{record.action.value}: desired {record.desired!r}, observed {record.observed!r}"
            return said + (f", HTTP {record.http_status}" if record.http_status else "") + \
                (f" ({record.reason})" if record.reason else "")
        return f"dead letter: {record.reason}"
    where = f"{record.site} {record.origin.value}"
    kind = body.__struct_config__.tag
    if kind == "event":
        return f"{where} {body.action}: username {body.username!r}, state {body.state_name!r}"
    if kind == "lookup":
        user = body.user
        return f"{where} GET {body.status}" + (f": username {user.username!r}, state {user.state!r}" if user else "")
    if kind == "listed":
        return f"{where} listing found username {body.user.username!r}, state {body.user.state!r} " \
               f"(table had {body.was_username!r}, {body.was_state!r})"
    if kind == "unlisted":
        return f"{where} listing in {body.states} lacked it (table had state {body.was_state!r})"
    if kind == "rejection":
        return f"{where} A refused {body.desired!r} (holding {body.observed!r}): HTTP {body.status}"
    return f"{where} {kind}"


def render(lines: list[Line], out: Any, terminal: bool) -> None:
    """A rich table on a terminal, JSON lines otherwise."""
    if not terminal:
        for line in lines:
            out.write(msgspec.json.encode(line.builtins()).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(lines)} facts")
    for column in ("observed", "link", "topic", "fact", "B after", "A after", "drift -> asks"):
        table.add_column(column)
    for line in lines:
        e, after = line.entry, line.entry.after
        table.add_row(e.at.isoformat(timespec="milliseconds"), e.link, f"{e.topic}[{e.partition}]@{e.offset}",
                      summary(line.record),
                      f"{after.b_username!r} {after.b_state or ''}" if after else "",
                      f"{after.a_username!r} {after.a_state or ''}" if after else "",
                      (f"yes -> {after.asks!r}" if after.drift else "no") if after else "")
    Console(file=out).print(table)

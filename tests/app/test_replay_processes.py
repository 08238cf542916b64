"""``usync replay --processes``: the events topic split between processes gives the table one
process gives, and the table the pure fold gives, from the beginning and from checkpoints.

Real Kafka, no worker: a seeded history of every kind of fact (events of every action,
parked ones and the lookups that attribute them, snapshot pages, renames, rejections,
listings' differences and summaries) on three links that share a source and chain a
target to another link's source, written as the bridge and the worker key them.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console

from streams.adapters.faust.tables import decode_row
from streams.adapters.faust.rowcodec import ROWS
from streams.adapters.kafka.checkpoints import TopicSink
from streams.adapters.kafka.client import client_options
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.readers import partitions_of, reader
from streams.adapters.kafka.topics import ensure_topics
from streams.contract.config import parse_config
from streams.contract.schema import (
    Envelope, Listed, ListingSummary, Lookup, OfferingUserEvent, Origin, Rejection, Unlisted, envelope_encoder,
)
from streams.core import TableState, as_dict, fold_many
from streams.metrics import Metrics
from streams.replay import replay
from streams.stages.checkpoint import Checkpointer
from tests.support.services import KAFKA_BOOTSTRAP
from tests.unit.test_fold_properties import ACTIONS, ENDPOINTS, LINKS, STATES, T0, USERNAMES, USERS, ou, page, record

PARTITIONS = 4


def config_text(suffix: str) -> str:
    text = f"""app_id = "usync-replay-{suffix}"
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
events_topic = "t-{suffix}.events"
dlq_topic = "t-{suffix}.dlq"
outcomes_topic = "t-{suffix}.outcomes"
partitions = {PARTITIONS}
"""
    for site in sorted({site for site, _ in ENDPOINTS}):
        text += f'[sites.{site}]\napi_url = "http://127.0.0.1:9/api/"\ntoken_env = "T"\n'
    for link in LINKS:
        text += (f'[[links]]\nname = "{link.name}"\n'
                 f'target = {{ site = "{link.target.site}", offering = "{link.target.offering}" }}\n'
                 f'source = {{ site = "{link.source.site}", offering = "{link.source.offering}" }}\n')
    return text


def history(rng: random.Random, count: int) -> list[Envelope]:
    """Facts about three users on every endpoint, mostly in time order, some late."""
    out = []
    for i in range(count):
        e = rng.randrange(len(ENDPOINTS))
        site, offering = ENDPOINTS[e]
        uuid_ = ou(e, rng.randrange(3))
        user = rng.choice(USERS)
        kind = rng.choice(["event"] * 6 + ["snapshot", "lookup", "lookup", "rejection", "listed", "unlisted", "summary"])
        link = rng.choice(LINKS).name
        origin = Origin.RECONCILE
        if kind == "event":
            body = OfferingUserEvent(action=rng.choice(ACTIONS), offering_user_uuid=uuid_, user_uuid="9" * 32,
                                     username=rng.choice([None, *USERNAMES]), state=rng.choice(STATES))
            origin = Origin.STOMP
        elif kind == "snapshot":
            body = page(offering, [record(ou(e, n), rng.choice(USERS), offering, rng.choice(USERNAMES), "OK",
                                          rng.random() < 0.2) for n in rng.sample(range(3), rng.randint(1, 3))])
            origin = Origin.SNAPSHOT
        elif kind == "lookup":
            found = rng.random() < 0.7
            body = Lookup(offering_user_uuid=uuid_, status=200 if found else 404,
                          user=record(uuid_, user, offering, rng.choice(USERNAMES), "OK") if found else None)
            origin = Origin.LOOKUP
        elif kind == "rejection":
            body = Rejection(link=link, user_username=user, offering_user_uuid=uuid_, desired=rng.choice(USERNAMES),
                             observed=rng.choice(USERNAMES), status=400)
            origin = Origin.REJECTION
        elif kind == "listed":
            body = Listed(link=link, snapshot_id="s", states=["OK"],
                          user=record(uuid_, user, offering, rng.choice(USERNAMES), rng.choice(["OK", "Deleted"])))
        elif kind == "unlisted":
            body = Unlisted(link=link, snapshot_id="s", states=["OK"], offering_user_uuid=uuid_, user_username=user)
        else:
            body = ListingSummary(snapshot_id="s", offering_uuid=offering, states=["OK"], pages=1, total=0, listed=0,
                                  digest="d", finished_at=T0)
        late = rng.random() < 0.1  # a lookup sent before an event, written after it; a listing's start
        at = T0 + timedelta(milliseconds=i - (rng.randrange(50) if late else 0))
        out.append(Envelope(event_id=f"e{i}", site=site, origin=origin, offering_uuid=offering, received_at=at,
                            body=body))
    return out


class StateSource:
    """A folded state as the checkpoint stage reads a worker's tables (stored rows, by link partition)."""

    def __init__(self, state: TableState) -> None:
        self.state = state
        partitioner, every = DefaultPartitioner(), list(range(PARTITIONS))
        self.partition = {link.name: partitioner(link.name.encode(), every, every) for link in LINKS}

    def active(self) -> set[int]:
        return set(range(PARTITIONS))

    def keys(self, partition: int) -> list[bytes]:
        return [key.encode() for key, row in self.state.rows.items() if self.partition[row.link] == partition]

    def value(self, partition: int, key: bytes) -> bytes | None:
        return ROWS.encode(self.state.rows[key.decode()])

    def watch(self, partition: int) -> set[bytes]:
        return set()

    def unwatch(self, partition: int) -> None:
        pass

    def pending(self, partition: int) -> list:
        return [p for p in self.state.pending.values() if self.partition[p.link] == partition]

    def marks(self, partition: int) -> dict[str, int]:
        return {key: mark for key, mark in self.state.marks.items() if self.partition[key.split(":")[0]] == partition}

    def decode(self, key: bytes, value: bytes):
        return decode_row(key, value)


async def replayed(config, checkpoint: bool = False, **options) -> dict:
    done = await replay(config, console=Console(quiet=True), **options)
    assert (done.checkpoint is not None) == checkpoint
    return as_dict(done.state)


async def test_replay_on_two_processes_equals_one_and_the_fold_from_the_beginning_and_from_checkpoints(
        kafka_bootstrap):
    config = parse_config(config_text(uuid.uuid4().hex[:10]), {"T": "x"})
    await ensure_topics(config)
    facts = history(random.Random(26), 1500)
    records = RecordSender(client_options(config))
    await records.start()
    try:
        async def write(envelopes: list[Envelope]) -> dict[int, int]:
            """Write in order (one producer: each partition keeps it); the end offsets after."""
            await records.send_all(config.kafka.events_topic,
                                   [(e.key.encode(), envelope_encoder.encode(e)) for e in envelopes])
            async with reader(config) as consumer:
                ends = await consumer.end_offsets(await partitions_of(consumer, config.kafka.events_topic))
            return {tp.partition: offset for tp, offset in ends.items()}

        first_half = await write(facts[:900])
        whole = TableState()
        fold_many(whole, LINKS, facts)
        assert len(whole.rows) > 6 and whole.pending and whole.marks  # the history exercises the fold

        from_beginning = await replayed(config)  # no checkpoint yet: from the beginning
        assert await replayed(config, processes=2) == from_beginning
        assert from_beginning == as_dict(_folded(facts[:900]))

        checkpointed = _folded(facts[:900])
        stage = Checkpointer(StateSource(checkpointed), TopicSink(config, records), None, 3600, Metrics())
        for partition in range(PARTITIONS):
            await stage.checkpoint(partition, first_half)
        await write(facts[900:])
    finally:
        await records.stop()
    want = as_dict(whole)
    assert await replayed(config, from_beginning=True) == want
    assert await replayed(config, checkpoint=True) == want  # from the checkpoints, the rest folded on top
    assert await replayed(config, checkpoint=True, processes=2) == want
    assert await replayed(config, processes=3, from_beginning=True) == want


def _folded(envelopes: list[Envelope]) -> TableState:
    state = TableState()
    fold_many(state, LINKS, envelopes)
    return state

"""Audit readers (issue 26): one user's history from a history of millions, replay on every core.

    .local/venv/bin/python bench/bench_audit.py [--envelopes 10000000] [--links 20] [--users 2500] [--quick]

1. a history made fast with the project's producers (``RecordSender``, the workers' own),
   in the realistic mix of a federation that reconciles with differences: per user a
   ``listed`` fact on each side (a first pass), then broker events on both sides (an
   ``update`` and a ``username_set`` per change on B, the echo on A), the correct stage's
   lookups of B and A, and one outcome per correction on the outcomes topic;
2. ``usync index`` over it (``streams.history.run_index``, this process): its CPU and the
   index's bytes per fact;
3. ``usync history`` for 20 random users (``streams.history.history``): p50 and max;
4. a raw aiokafka consume of the events topic, then ``usync replay --from-beginning`` with 1
   and 2 processes on the same topic, side by side.

``--quick`` (1M envelopes) ends with exactly
``audit: history_p50_ms=<int> history_max_ms=<int> replay_per_s=<int> raw_per_s=<int> replay_2p_ratio=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from streams.adapters.kafka.client import client_options  # noqa: E402
from streams.adapters.kafka.producers import RecordSender  # noqa: E402
from streams.adapters.kafka.topics import ensure_topics  # noqa: E402
from streams.contract.config import parse_config  # noqa: E402
from streams.contract.schema import (  # noqa: E402
    Envelope, Listed, Lookup, OfferingUserEvent, OfferingUserRecord, Origin, Outcome, OutcomeAction, envelope_encoder,
    event_key, outcome_encoder,
)
from streams.history import key_partitioner, history, run_index  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.worker import tune_gc  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402


def config_text(suffix: str, links: list[tuple[str, str]]) -> str:
    text = (f'app_id = "usync-audit-{suffix}"\n[kafka]\nbootstrap_servers = "{KAFKA_BOOTSTRAP}"\n'
            f'events_topic = "audit-{suffix}.events"\ndlq_topic = "audit-{suffix}.dlq"\n'
            f'outcomes_topic = "audit-{suffix}.outcomes"\npartitions = 8\n'
            '[sites.a]\napi_url = "http://127.0.0.1:9/api/"\ntoken_env = "T"\n'
            '[sites.b]\napi_url = "http://127.0.0.1:9/api/"\ntoken_env = "T"\n')
    for n, (off_a, off_b) in enumerate(links):
        text += (f'[[links]]\nname = "l{n}"\ntarget = {{ site = "a", offering = "{off_a}" }}\n'
                 f'source = {{ site = "b", offering = "{off_b}" }}\n')
    return text


class Maker:
    """The history's records, in the order a federation writes them."""

    def __init__(self, links: list[tuple[str, str]], users: int, rng: random.Random) -> None:
        self.links, self.rng = links, rng
        self.people = [(n, f"l{n}u{i}", uuid.uuid4().hex, uuid.uuid4().hex) for n in range(len(links))
                       for i in range(users)]  # (link, user, A's offering user, B's)
        self.at = datetime.now(timezone.utc) - timedelta(days=1)

    def _envelope(self, site: str, offering: str, origin: Origin, body) -> tuple[str, bytes, bytes]:
        self.at += timedelta(microseconds=50)
        env = Envelope(event_id=uuid.uuid4().hex, site=site, origin=origin, offering_uuid=offering, received_at=self.at,
                       body=body)
        return "events", event_key(site, offering).encode(), envelope_encoder.encode(env)

    def first_pass(self):
        for n, user, a_ou, b_ou in self.people:
            off_a, off_b = self.links[n]
            for site, offering, ou in (("b", off_b, b_ou), ("a", off_a, a_ou)):
                record = OfferingUserRecord(uuid=ou, user_uuid=uuid.uuid4().hex, user_username=user,
                                            offering_uuid=offering, username=user, state="OK")
                yield self._envelope(site, offering, Origin.RECONCILE,
                                     Listed(link=f"l{n}", snapshot_id="s", states=["OK"], user=record))

    def change(self, k: int):
        """One username change on B: its two events, the reads, the PATCH's echo, the outcome (8 records)."""
        n, user, a_ou, b_ou = self.rng.choice(self.people)
        off_a, off_b = self.links[n]
        name = f"{user}-{k}"
        for action, state in (("update", "OK"), ("username_set", 5)):
            yield self._envelope("b", off_b, Origin.STOMP, OfferingUserEvent(action=action, offering_user_uuid=b_ou,
                                                                            user_uuid="9" * 32, username=name,
                                                                            state=state))
        for site, offering, ou, username in (("b", off_b, b_ou, name), ("a", off_a, a_ou, user), ("a", off_a, a_ou, name)):
            record = OfferingUserRecord(uuid=ou, user_uuid="9" * 32, user_username=user, offering_uuid=offering,
                                        username=username, state="OK")
            yield self._envelope(site, offering, Origin.LOOKUP, Lookup(offering_user_uuid=ou, status=200, user=record))
        yield self._envelope("a", off_a, Origin.STOMP, OfferingUserEvent(action="update", offering_user_uuid=a_ou,
                                                                        user_uuid="8" * 32, username=name, state="OK"))
        outcome = Outcome(link=f"l{n}", user_username=user, action=OutcomeAction.CORRECTED, desired=name, observed=user,
                          http_status=200, offering_user_uuid=a_ou, at=self.at)
        yield "outcomes", f"l{n}:{user}".encode(), outcome_encoder.encode(outcome)


async def make(config, maker: Maker, total: int) -> int:
    sender = RecordSender(client_options(config), "bench", linger_ms=20)
    await sender.start()
    topics = {"events": config.kafka.events_topic, "outcomes": config.kafka.outcomes_topic}
    partition_of = key_partitioner(config.kafka.partitions)  # the producers' default partitioner, keys remembered
    made, chunk, k = 0, [], 0

    async def flush() -> None:
        by_topic: dict[str, list] = {}
        for topic, key, value in chunk:
            by_topic.setdefault(topics[topic], []).append((key, value))
        await asyncio.gather(*(sender.send_bulk(t, records, partition_of) for t, records in by_topic.items()))
        chunk.clear()
    try:
        for record in maker.first_pass():
            chunk.append(record)
            made += 1
            if len(chunk) >= 20_000:
                await flush()
        while made < total:
            for record in maker.change(k):
                chunk.append(record)
                made += 1
            k += 1
            if len(chunk) >= 20_000:
                await flush()
        await flush()
    finally:
        await sender.stop()
    return made


async def raw_consume(topic: str) -> tuple[int, float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        end = sum((await consumer.end_offsets([tp for tp in await _parts(consumer, topic)])).values())
        seen, began = 0, time.perf_counter()
        while seen < end:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                seen += len(messages)
        return seen, time.perf_counter() - began
    finally:
        await consumer.stop()


async def _parts(consumer: AIOKafkaConsumer, topic: str):
    from aiokafka import TopicPartition

    while not consumer.partitions_for_topic(topic):
        await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(11)
    suffix = uuid.uuid4().hex[:8]
    links = [(uuid.uuid4().hex, uuid.uuid4().hex) for _ in range(args.links)]
    config = parse_config(config_text(suffix, links), {"T": "x"})
    await ensure_topics(config)
    maker = Maker(links, args.users, rng)
    began = time.perf_counter()
    made = await make(config, maker, args.envelopes)
    print(f"history: {made:,} records ({args.links} links x {args.users} users) made in {time.perf_counter() - began:.1f} s")
    cpu, began = time.process_time(), time.perf_counter()
    indexed = await run_index(config, once=True)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - began
    print(f"index: {indexed.records:,} records -> {indexed.entries:,} entries in {wall:.1f} s; "
          f"{indexed.bytes / indexed.records:.0f} B and {1e6 * cpu / indexed.records:.1f} us of CPU per fact "
          f"(before the topic's compression)")
    times = []
    for _, user, _a, _b in rng.sample(maker.people, 20):
        began = time.perf_counter()
        lines = await history(config, user)
        times.append(1000 * (time.perf_counter() - began))
        assert lines, user
    p50, worst = statistics.median(times), max(times)
    print(f"history of 20 random users: p50 {p50:.0f} ms, max {worst:.0f} ms")
    tune_gc()
    raw_n, raw_s = await raw_consume(config.kafka.events_topic)
    quiet = Console(stderr=True, quiet=True)
    one = await replay(config, from_beginning=True, console=quiet)
    two = await replay(config, from_beginning=True, console=quiet, processes=2)
    raw, r1, r2 = raw_n / raw_s, one.folded / one.seconds, two.folded / two.seconds
    print(f"{'events topic':<28}{'envelopes':>12}{'per s':>12}{'x raw':>8}")
    print(f"{'raw aiokafka consume':<28}{raw_n:>12,}{raw:>12,.0f}{1:>8.2f}")
    print(f"{'replay, 1 process':<28}{one.folded:>12,}{r1:>12,.0f}{r1 / raw:>8.2f}")
    print(f"{'replay, 2 processes':<28}{two.folded:>12,}{r2:>12,.0f}{r2 / raw:>8.2f}  ({r2 / r1:.2f}x one process)")
    print(f"audit: history_p50_ms={p50:.0f} history_max_ms={worst:.0f} replay_per_s={r1:.0f} raw_per_s={raw:.0f} "
          f"replay_2p_ratio={r2 / r1:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envelopes", type=int, default=10_000_000, help="records to make (events and outcomes)")
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--users", type=int, default=2500, help="users per link")
    parser.add_argument("--quick", action="store_true", help="1M records")
    args = parser.parse_args()
    if args.quick:
        args.envelopes = 1_000_000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

"""Replay in one process and in two, and the worker's fold, beside a raw aiokafka consume of
the same topic (not part of pytest).

    .local/venv/bin/python bench/bench_replay.py [--events 200000] [--users 10000] [--runs 3] [--worker]
    .local/venv/bin/python bench/bench_replay.py --tree ../before   # the same bench on another checkout
    .local/venv/bin/python bench/bench_replay.py --runs 1 --profile /tmp/replay.txt   # where replay spends

1. pre-fills a fresh events topic of 4 partitions with ``--links`` links (default 2) whose
   offerings each have a partition of their own, so that ``--processes 2`` has two equal
   halves: per link, snapshot pages of both sides, then username updates of its converged
   users alternating A and B (``bench_fold.py``'s mix, ``--users`` users per link);
2. then ``--runs`` rounds, each in this order: a raw consume of the topic (one aiokafka
   consumer, ``getmany``: the ceiling), ``replay`` in one process, ``replay --processes 2``
   and, with ``--worker``, a ``usync worker`` (memory store) folding the topic (route,
   repartition, fold) in a process of its own, timed from its first folded batch.

Each line gives the wall rate and the CPU per envelope of the process measured: this one
for the raw consume and one process, the children's and this one's for two processes, the
worker's own for the fold. The last line is the medians over the rounds::

    replay: replay_per_s=.. raw_per_s=.. replay_ratio=.. replay_2p_per_s=.. replay_2p_ratio=.. fold_per_cpu_s=.. fold_ratio=..

``replay_ratio``: one process's rate over the raw rate; ``replay_2p_ratio``: two processes'
over one's; ``fold_ratio``: envelopes the worker folds per CPU-second over the raw rate
(``-1`` without ``--worker``). ``--tree PATH`` imports ``streams`` (and starts the worker)
from another checkout, so a change is measured against the tree before it, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import importlib.util
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE
if "--tree" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from streams.adapters.kafka.topics import ensure_topics  # noqa: E402
from streams.contract.config import parse_config  # noqa: E402
from streams.contract.schema import (  # noqa: E402
    Envelope, OfferingUserEvent, OfferingUserRecord, Origin, SnapshotPage, envelope_encoder, event_key,
)
from streams.replay import replay  # noqa: E402
from streams.worker import tune_gc  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402  (USYNC_PORT_OFFSET)

PARTITIONS = 4
PAGE = 300


def offerings(count: int) -> list[str]:
    """``count`` offering uuids whose keys (site a or b alternately) land on distinct partitions
    in turn (the producers' default partitioner), so every partition carries the same share."""
    partitioner, every, found = DefaultPartitioner(), list(range(PARTITIONS)), []
    while len(found) < count:
        candidate = uuid.uuid4().hex
        site = "b" if len(found) % 2 == 0 else "a"
        if partitioner(event_key(site, candidate).encode(), every, every) == len(found) % PARTITIONS:
            found.append(candidate)
    return found


def config_text(suffix: str, links: list[tuple[str, str]], codec: str | None = None) -> str:
    text = f"""app_id = "usync-bench-{suffix}"
reconcile_interval = 86400
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
events_topic = "bench-{suffix}.events"
dlq_topic = "bench-{suffix}.dlq"
outcomes_topic = "bench-{suffix}.outcomes"
partitions = {PARTITIONS}
[sites.a]
api_url = "http://127.0.0.1:9/api/"
token_env = "BENCH_TOKEN_A"
[sites.b]
api_url = "http://127.0.0.1:9/api/"
token_env = "BENCH_TOKEN_B"
"""
    if codec:
        text += f'[kafka.compression]\nevents = "{codec}"\ninternal = "{codec}"\n'
    for i, (b_off, a_off) in enumerate(links):
        text += f"""[[links]]
name = "bench{i}"
reconcile = false
target = {{ site = "a", offering = "{a_off}" }}
source = {{ site = "b", offering = "{b_off}" }}
"""
    return text


def envelopes(links: list[tuple[str, str]], n_events: int, n_users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of every envelope, in the order written: each link's snapshot pages of both
    sides, then updates of its users, the links interleaved, one microsecond apart."""
    now = datetime.now(timezone.utc)
    out: list[tuple[bytes, bytes]] = []
    users = [[(f"user{i}", uuid.uuid4().hex, uuid.uuid4().hex) for i in range(n_users)] for _ in links]
    for (b_off, a_off), mine in zip(links, users):
        for site, off, idx in (("b", b_off, 2), ("a", a_off, 1)):
            for page, start in enumerate(range(0, n_users, PAGE), 1):
                records = [OfferingUserRecord(uuid=u[idx], user_uuid=uuid.uuid4().hex, user_username=u[0],
                                              offering_uuid=off, username=u[0], state="OK")
                           for u in mine[start:start + PAGE]]
                body = SnapshotPage(snapshot_id="s", offering_uuid=off, states=["OK"], page=page,
                                    last=start + PAGE >= n_users, total=n_users, users=records)
                out.append((event_key(site, off).encode(), envelope_encoder.encode(Envelope(
                    event_id=uuid.uuid4().hex, site=site, origin=Origin.SNAPSHOT, offering_uuid=off,
                    received_at=now, body=body))))
    for i in range(n_events - len(out)):
        link = i % len(links)
        name, a_uuid, b_uuid = users[link][(i // len(links)) % n_users]
        b_off, a_off = links[link]
        site, off, ou = ("b", b_off, b_uuid) if (i // len(links)) % 2 else ("a", a_off, a_uuid)
        body = OfferingUserEvent(action="update", offering_user_uuid=ou, user_uuid=uuid.uuid4().hex, username=name,
                                 state="OK")
        out.append((event_key(site, off).encode(), envelope_encoder.encode(Envelope(
            event_id=uuid.uuid4().hex, site=site, origin=Origin.STOMP, offering_uuid=off,
            received_at=now + timedelta(microseconds=i + 1), body=body))))
    return out


async def prefill(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, linger_ms=20, max_batch_size=1 << 20, acks="all")
    await producer.start()
    try:
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= 10000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_consume(topic: str, total: int) -> tuple[float, float]:
    """(envelopes/s, CPU µs per envelope) of one aiokafka consumer reading the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        began, cpu, seen = time.perf_counter(), time.process_time(), 0
        while seen < total:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=10000)).values():
                seen += len(messages)
        return seen / (time.perf_counter() - began), (time.process_time() - cpu) / seen * 1e6
    finally:
        await consumer.stop()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_profile(out: Path | None) -> subprocess.Popen | None:
    """py-spy sampling this process (100 Hz, CPU samples, collapsed stacks) into ``out``."""
    if out is None:
        return None
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()),
                            "--rate", "100", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return spy


def stop_profile(spy: subprocess.Popen | None, out: Path | None) -> None:
    """Stop py-spy and print the profile's ten costliest functions by their own samples."""
    if spy is None or out is None:
        return
    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    own: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.rsplit(";", 1)[-1].strip()] += int(count)
    total = sum(own.values()) or 1
    print(f"profile {out} ({total} samples), by own samples:")
    for frame, count in own.most_common(10):
        print(f"  {count / total:6.1%}  {frame}")


async def replayed(config, processes: int, total: int, profile: Path | None = None) -> tuple[float, float]:
    """(envelopes/s, CPU µs per envelope) of ``replay`` with ``processes``, this process's and its children's."""
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 (the progress bar is not measured)
    spy = start_profile(profile)
    began, cpu, children = time.perf_counter(), time.process_time(), children_cpu()
    done = await replay(config, console=quiet, processes=processes)
    seconds = time.perf_counter() - began
    stop_profile(spy, profile)
    spent = time.process_time() - cpu + children_cpu() - children
    assert done.folded == total, (done.folded, total)
    assert len(done.state.rows) > 0
    del done
    gc.collect()
    return total / seconds, spent / total * 1e6


async def worker_fold(path: Path, total: int) -> tuple[float, float]:
    """(envelopes/s, envelopes per CPU-second of the worker) of a ``usync worker`` of ``ROOT``
    folding the topic: ``bench_fold.py``'s measurement, on the tree measured."""
    os.environ["USYNC_BENCH_TREE"] = str(ROOT)
    spec = importlib.util.spec_from_file_location("bench_fold", HERE / "bench" / "bench_fold.py")
    bench_fold = importlib.util.module_from_spec(spec)
    sys.modules["bench_fold"] = bench_fold  # its dataclasses look their module up
    spec.loader.exec_module(bench_fold)
    measure = bench_fold.worker_fold

    env = {**os.environ, "BENCH_TOKEN_A": "x", "BENCH_TOKEN_B": "x", "PYTHONPATH": str(ROOT)}
    return await measure(path, env, total)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000, help="per link")
    parser.add_argument("--links", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help="also the worker's fold (a fresh app id each run)")
    parser.add_argument("--tree", type=Path, help="measure the streams package of another checkout")
    parser.add_argument("--codec", choices=("none", "gzip", "lz4", "zstd"),
                        help="[kafka.compression] events and internal (default: the config's default)")
    parser.add_argument("--profile", type=Path, help="py-spy the first one-process replay into this file "
                        "(its figures are not figures: the sampler stops the process)")
    args = parser.parse_args()
    print(f"tree: {ROOT}; load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tune_gc()  # as `usync replay` does
    links = list(zip(*[iter(offerings(2 * args.links))] * 2))
    records = envelopes(links, args.events, args.users)
    suffix = uuid.uuid4().hex[:8]
    config = parse_config(config_text(suffix, links, args.codec), {"BENCH_TOKEN_A": "x", "BENCH_TOKEN_B": "x"})
    await ensure_topics(config)
    t0 = time.perf_counter()
    await prefill(config.kafka.events_topic, records)
    total = len(records)
    del records
    print(f"prefill:      {total:,} envelopes in {time.perf_counter() - t0:.1f} s")
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            rate, us = await raw_consume(config.kafka.events_topic, total)
            print(f"raw consume:  {rate:>10,.0f} envelopes/s, {us:5.2f} µs CPU each (aiokafka getmany)")
            one, one_us = await replayed(config, 1, total, args.profile if run == 0 else None)
            print(f"replay 1p:    {one:>10,.0f} envelopes/s, {one_us:5.2f} µs CPU each ({one / rate:.2f} of raw)")
            two, two_us = await replayed(config, 2, total)
            print(f"replay 2p:    {two:>10,.0f} envelopes/s, {two_us:5.2f} µs CPU each ({two / one:.2f} of 1p)")
            for name, value in (("raw", rate), ("one", one), ("two", two), ("ratio", one / rate), ("ratio2", two / one)):
                figures.setdefault(name, []).append(value)
            if args.worker:
                path = Path(tmp) / f"usync{run}.toml"
                path.write_text(config_text(suffix, links, args.codec).replace(f'"usync-bench-{suffix}"',
                                                                   f'"usync-bench-{suffix}-{run}"'))
                fold, per_cpu = await worker_fold(path, total)
                print(f"worker fold:  {fold:>10,.0f} envelopes/s, {per_cpu:,.0f} per CPU-second of the worker "
                      f"({1e6 / per_cpu:.2f} µs each; {per_cpu / rate:.3f} of raw)")
                figures.setdefault("fold", []).append(per_cpu)
                figures.setdefault("fold_ratio", []).append(per_cpu / rate)
            print(f"load:         {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        print(f"range {name:>10}: {min(values):,.2f} .. {max(values):,.2f}")
    print(f"replay: replay_per_s={med['one']:.0f} raw_per_s={med['raw']:.0f} replay_ratio={med['ratio']:.3f} "
          f"replay_2p_per_s={med['two']:.0f} replay_2p_ratio={med['ratio2']:.3f} "
          f"fold_per_cpu_s={med.get('fold', -1):.0f} fold_ratio={med.get('fold_ratio', -1):.3f}")


if __name__ == "__main__":
    asyncio.run(main())

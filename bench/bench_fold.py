"""Throughput figures of the Faust app (not part of pytest).

    .local/venv/bin/python bench/bench_fold.py [--events 200000] [--users 10000] [--patches 2000]
    .local/venv/bin/python bench/bench_fold.py --quick            # <= 90 s; last line: the figures
    .local/venv/bin/python bench/bench_fold.py --profile DIR      # py-spy profiles of the worker
    .local/venv/bin/python bench/bench_fold.py --tree ../other    # the same bench on another checkout

``--quick``'s last line is ``fold: fold_per_cpu_s=.. raw_per_s=.. fold_ratio=.. replay_per_s=..
correct_cpu_us=..``, all measured in that run: fold_ratio = envelopes folded per CPU-second of
the worker process ÷ the raw consume rate (envelopes/s of one aiokafka consumer, the best of
3 reads of the topic); correct_cpu_us = CPU µs of the sink's process per correction.

``--profile DIR`` samples the worker's process with py-spy (``pip install py-spy``, the
``bench`` extra; 100 Hz, CPU samples only) while it folds (``DIR/fold.txt``) and the sink's
process while it corrects (``DIR/correct.txt``), as collapsed stacks, and prints each one's
top costs (``bench/profile_top.py``). A profiled run's rates are not figures: the sampler
pauses the process at every sample.

``--tree PATH`` imports ``streams`` (and starts the worker) from another checkout: the
before/after comparisons run this same bench against both trees, alternating.

1. pre-fills a fresh events topic (snapshot pages, then username updates of converged users);
2. raw aiokafka consume of that topic (the ceiling);
3. fold: a ``usync worker`` subprocess (memory store) folds the topic: route -> repartition -> fold,
   timed from the worker's readiness to its folded counter reaching the total;
4. replay of the same topic (``streams.replay.replay``, no network);
5. sink PATCH/s: the sink (live GET B, GET A, PATCH A, Lookup + outcome records acked by Kafka)
   against the simulator, running in a process of its own as remote sites would, with a
   generous rate limit. The sink runs in a process of its own too (the worker's correct
   stage: requests decoded from records, dispatched to the per-site lanes), and its CPU per
   correction is that process's alone (the simulator's is printed beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
ROOT = Path(os.environ.get("USYNC_BENCH_TREE") or HERE).resolve()  # the tree measured (--tree)
if "--tree" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
    os.environ["USYNC_BENCH_TREE"] = str(ROOT)
sys.path.insert(0, str(ROOT))

from streams.contract.config import parse_config
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.client import client_options
from streams.adapters.kafka.topics import ensure_topics
from streams.metrics import Metrics  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.contract.schema import (
    Envelope,
    OfferingUserEvent,
    OfferingUserRecord,
    SnapshotPage,
    Origin,
    envelope_encoder,
    event_key,
)
from streams.contract.schema import CorrectionRequest, request_encoder
from streams.stages.correct import Corrector
from streams.stages.correct_loop import BATCH, CorrectLoop
from streams.stages.dead_letter import DeadLetters
from streams.adapters.waldur import Clients
from streams.worker import tune_gc  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402  (USYNC_PORT_OFFSET)

BOOT = KAFKA_BOOTSTRAP
PYSPY = Path(sys.executable).parent / "py-spy"


def config_text(suffix: str, a_url: str, b_url: str, a_off: str, b_off: str, rates: str = "") -> str:
    return f"""app_id = "usync-bench-{suffix}"
reconcile_interval = 86400
[kafka]
bootstrap_servers = "{BOOT}"
events_topic = "bench-{suffix}.events"
dlq_topic = "bench-{suffix}.dlq"
outcomes_topic = "bench-{suffix}.outcomes"
partitions = 4
[sites.a]
api_url = "{a_url}"
token_env = "BENCH_TOKEN_A"
{rates.replace('[rates]', '[sites.a.rates]')}
[sites.b]
api_url = "{b_url}"
token_env = "BENCH_TOKEN_B"
{rates.replace('[rates]', '[sites.b.rates]')}
[[links]]
name = "bench"
reconcile = false
target = {{ site = "a", offering = "{a_off}" }}
source = {{ site = "b", offering = "{b_off}" }}
"""


async def prefill(config, n_events: int, n_users: int, a_off: str, b_off: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=BOOT, linger_ms=20, max_batch_size=1 << 20, acks="all")
    await producer.start()
    now = datetime.now(timezone.utc)
    topic = config.kafka.events_topic
    sent = 0
    try:
        users = [(f"user{i}", uuid.uuid4().hex, uuid.uuid4().hex) for i in range(n_users)]  # name, a uuid, b uuid
        for site, off, idx in (("b", b_off, 2), ("a", a_off, 1)):
            for page, start in enumerate(range(0, n_users, 300), 1):
                chunk = users[start:start + 300]
                records = [OfferingUserRecord(uuid=u[idx], user_uuid=uuid.uuid4().hex, user_username=u[0],
                                              offering_uuid=off, username=u[0], state="OK") for u in chunk]
                env = Envelope(event_id=uuid.uuid4().hex, site=site, origin=Origin.SNAPSHOT, offering_uuid=off,
                               received_at=now, body=SnapshotPage(snapshot_id="s", offering_uuid=off, states=["OK"],
                                                                  page=page, last=start + 300 >= n_users,
                                                                  total=n_users, users=records))
                await producer.send(topic, envelope_encoder.encode(env), key=event_key(site, off).encode())
                sent += 1
        futures = []
        for i in range(n_events - sent):
            name, a_uuid, b_uuid = users[i % n_users]
            site, off, ou = (("b", b_off, b_uuid) if i % 2 else ("a", a_off, a_uuid))
            env = Envelope(event_id=uuid.uuid4().hex, site=site, origin=Origin.STOMP, offering_uuid=off,
                           received_at=now, body=OfferingUserEvent(action="update", offering_user_uuid=ou,
                                                                   user_uuid=uuid.uuid4().hex, username=name, state="OK"))
            futures.append(await producer.send(topic, envelope_encoder.encode(env), key=event_key(site, off).encode()))
            if len(futures) >= 10000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return n_events
    finally:
        await producer.stop()


async def raw_consume(topic: str, total: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOT, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    began, seen = time.perf_counter(), 0
    try:
        while seen < total:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=10000)).values():
                seen += len(messages)
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process: a figure the other load on the machine does not bend."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profile(pid: int, out: Path | None) -> subprocess.Popen | None:
    """py-spy sampling ``pid`` (CPU samples only, 100 Hz) into ``out`` as collapsed stacks."""
    if out is None:
        return None
    if not PYSPY.exists():
        raise SystemExit(f"--profile needs py-spy in the venv: {sys.executable} -m pip install py-spy")
    return subprocess.Popen([str(PYSPY), "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen | None, out: Path | None, per: str, units: int) -> None:
    if proc is None or out is None:
        return
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    from profile_top import report  # noqa: E402  (beside this file, whatever --tree says)

    print(report(out, per=per, units=units))


async def worker_fold(path: Path, env: dict, total: int, profile: Path | None = None) -> tuple[float, float]:
    port = 16066 + int(os.environ.get("USYNC_PORT_OFFSET", "0")) + os.getpid() % 1000
    log = open(path.parent / "worker.log", "wb")
    proc = subprocess.Popen([str(HERE / ".local/venv/bin/usync"), "--log-level", "warning", "worker", "--config", str(path),
                             "--store", "memory", "--web-port", str(port), "--no-reconcile"],
                            env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    spy = None
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            began = first = None  # the clock starts at the first folded batch: startup and the group join are not folding
            while True:
                try:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited; see {log.name}") from None
                    await asyncio.sleep(0.05)
                    continue
                folded = sum(float(line.split()[-1]) for line in text.splitlines()
                             if line.startswith("usync_events_folded_total"))
                if folded and began is None:
                    began, first, cpu = time.perf_counter(), folded, cpu_seconds(proc.pid)
                    spy = start_profile(proc.pid, profile)
                if folded >= total:
                    rate = (folded - first) / (time.perf_counter() - began)
                    per_cpu = (folded - first) / (cpu_seconds(proc.pid) - cpu)
                    stop_profile(spy, profile, "envelope", int(folded - first))
                    spy = None
                    return rate, per_cpu
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; see {log.name}")
                await asyncio.sleep(0.05)
    finally:
        if spy is not None:
            spy.kill()
        proc.terminate()
        proc.wait(20)


async def _sites(n: int, conn) -> None:
    """The simulator's side of the sink bench, in its own process (as remote sites would be)."""
    from waldursim import Federation

    async with Federation(broker_enabled=False, seed=1, publish_rate=0) as sim:
        a, b = sim.add_site("a"), sim.add_site("b")
        await sim.start()
        offs, projs = {}, {}
        for s in (a, b):
            sp, c = s.create_customer("sp"), s.create_customer("c", owners=[])
            offs[s.name] = s.create_offering(sp, "hpc")
            projs[s.name] = s.create_project(c, "p")
            s.create_resource(offs[s.name], projs[s.name], backend_id="x")
        a.events_enabled = b.events_enabled = False
        users = []
        for i in range(n):
            [aou] = a.add_project_member(a.create_user(f"p{i}"), projs["a"])
            [bou] = b.add_project_member(b.create_user(f"p{i}"), projs["b"])
            b.set_username(bou, f"p{i}_b")
            users.append((f"p{i}", aou.uuid, bou.uuid))
        conn.send({"a": (a.url, a.staff_token, offs["a"].uuid), "b": (b.url, b.staff_token, offs["b"].uuid), "users": users})
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "done"
        conn.send(sum(1 for c in a.calls.log if c.method == "PATCH"))


def _run_sites(n: int, conn) -> None:
    asyncio.run(_sites(n, conn))


@dataclass(frozen=True)
class ConsumedRecord:
    """A correction request as the sink's consumer hands it over (``streams.ports.Record``)."""

    topic: str
    partition: int
    offset: int
    value: bytes


async def _correct(setup: dict, conn) -> None:
    """The worker's correct stage alone, in a process of its own: records -> lanes -> Corrector,
    its facts and outcomes acknowledged by Kafka. Sends back (elapsed s, CPU s) of this process."""
    tune_gc()
    (a_url, a_token, a_off), (b_url, b_token, b_off) = setup["a"], setup["b"]
    suffix = uuid.uuid4().hex[:8]
    rates = "[rates]\nrequests_per_second = 100000.0\nburst = 1000\nconcurrency = 64\ntimeout = 10.0"
    config = parse_config(config_text(suffix, a_url, b_url, a_off, b_off, rates),
                          {"BENCH_TOKEN_A": a_token, "BENCH_TOKEN_B": b_token})
    await ensure_topics(config)
    records = RecordSender(client_options(config))  # the worker's sink emits through one of these
    await records.start()
    metrics = Metrics()
    clients = Clients(config, metrics)
    extra = {"enqueue_event": records.enqueuer(config.kafka.events_topic)} if hasattr(records, "enqueuer") else {}
    sink = Corrector({link.name: link for link in config.links}, clients, metrics,  # as streams.app wires it
                     records.emitter(config.kafka.events_topic), records.emitter(config.kafka.outcomes_topic), **extra)
    lanes = CorrectLoop(sink, DeadLetters(records.emitter(config.kafka.dlq_topic), metrics))
    consumed = [ConsumedRecord("bench-corrections", 0, offset, request_encoder.encode(CorrectionRequest(
        link="bench", user_username=name, a_offering_user_uuid=a_uuid, b_offering_user_uuid=b_uuid, desired=f"{name}_b")))
        for offset, (name, a_uuid, b_uuid) in enumerate(setup["users"])]
    conn.send(os.getpid())
    conn.recv()  # "go" (the profiler is attached): blocking, so no thread of this process is left waiting
    began, cpu_began = time.perf_counter(), os.times()
    for start in range(0, len(consumed), BATCH):  # the sink consumer's batch size
        await lanes.handle(consumed[start:start + BATCH])
    elapsed, cpu = time.perf_counter() - began, os.times()
    await records.stop()
    await clients.close()
    conn.send((elapsed, cpu.user - cpu_began.user, cpu.system - cpu_began.system))


def _run_correct(setup: dict, conn) -> None:
    asyncio.run(_correct(setup, conn))


@dataclass
class SinkFigures:
    rate: float  # PATCH/s
    sink_cpu: float  # CPU seconds per PATCH, the sink's process (the correct stage and its record producer)
    sites_cpu: float  # CPU seconds per PATCH, the simulator's process (both sites)
    sink_system: float  # of sink_cpu, in the kernel (socket writes and epoll: on loopback a send runs the receiver's TCP too)


async def sink_bench(n: int, profile: Path | None = None) -> SinkFigures:
    fork = multiprocessing.get_context("fork")
    loop = asyncio.get_running_loop()
    parent, child = fork.Pipe()
    sites = fork.Process(target=_run_sites, args=(n, child), daemon=True)
    sites.start()
    sink = None
    try:
        setup = await loop.run_in_executor(None, parent.recv)
        to_sink, sink_end = fork.Pipe()
        sink = fork.Process(target=_run_correct, args=(setup, sink_end), daemon=True)
        sink.start()
        pid = await loop.run_in_executor(None, to_sink.recv)
        spy = start_profile(pid, profile)
        if spy is not None:
            await asyncio.sleep(1.0)  # py-spy attached
        sites_began = cpu_seconds(sites.pid)
        to_sink.send("go")
        elapsed, sink_user, sink_system = await loop.run_in_executor(None, to_sink.recv)
        sites_cpu = cpu_seconds(sites.pid) - sites_began
        stop_profile(spy, profile, "correction", n)
        parent.send("done")
        patched = await loop.run_in_executor(None, parent.recv)
        assert patched == n, patched
        return SinkFigures(patched / elapsed, (sink_user + sink_system) / patched, sites_cpu / patched,
                           sink_system / patched)
    finally:
        for process in (sink, sites):
            if process is not None:
                process.join(10)
                if process.is_alive():
                    process.kill()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--patches", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="<= 90 s: 120k events, 1,000 patches")
    parser.add_argument("--profile", type=Path, help="write py-spy profiles of the worker here and print their top costs")
    parser.add_argument("--tree", type=Path, help="measure the streams package of another checkout")
    parser.add_argument("--only", choices=("correct",), help="only the correct stage's figures (the sink phase)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.users, args.patches = 120_000, 5_000, 1_000
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(f"tree: {ROOT}; load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    tune_gc()  # as `usync worker` and `usync replay` do: the replay runs in this process
    if args.only == "correct":
        sink = await sink_bench(args.patches, args.profile and args.profile / "correct.txt")
        print_sink(sink)
        return
    suffix = uuid.uuid4().hex[:8]
    a_off, b_off = uuid.uuid4().hex, uuid.uuid4().hex
    env = {**os.environ, "BENCH_TOKEN_A": "x", "BENCH_TOKEN_B": "x"}
    text = config_text(suffix, "http://127.0.0.1:9/api/", "http://127.0.0.1:9/api/", a_off, b_off)
    config = parse_config(text, env)
    await ensure_topics(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "usync.toml"
        path.write_text(text)
        t0 = time.perf_counter()
        total = await prefill(config, args.events, args.users, a_off, b_off)
        print(f"prefill:      {total:,} envelopes in {time.perf_counter() - t0:.1f} s")
        # The best of 3: one read of a short topic moves 4x with the consumer's start and the box's load.
        raws = [await raw_consume(config.kafka.events_topic, total) for _ in range(3)]
        raw = max(raws)
        print(f"raw consume:  {raw:>10,.0f} events/s (aiokafka getmany; best of {', '.join(f'{r:,.0f}' for r in raws)})")
        rate, per_cpu = await worker_fold(path, env, total, args.profile and args.profile / "fold.txt")
        print(f"worker fold:  {rate:>10,.0f} events/s (1 worker: route, repartition, fold); "
              f"{per_cpu:,.0f} events per CPU-second of the worker ({per_cpu / raw:.3f} of the raw rate)")
        replayed = await replay(config)
        folded, seconds = replayed.folded, replayed.seconds
        print(f"replay:       {folded / seconds:>10,.0f} events/s")
        # The sink's process is forked from this one: it must not carry the replayed table
        # (every full collection in it would walk those rows).
        del replayed
        gc.collect()
    sink = await sink_bench(args.patches, args.profile and args.profile / "correct.txt")
    print_sink(sink)
    print(f"fold: fold_per_cpu_s={per_cpu:.0f} raw_per_s={raw:.0f} fold_ratio={per_cpu / raw:.3f} "
          f"replay_per_s={folded / seconds:.0f} correct_cpu_us={sink.sink_cpu * 1e6:.0f}")


def print_sink(sink: SinkFigures) -> None:
    print(f"sink:         {sink.rate:>10,.0f} PATCH/s (GET B + GET A + PATCH + 3 Lookup facts + 1 outcome each; "
          f"sink and simulator in processes of their own)")
    # On two cores the simulator shares the machine: the sink's own CPU per PATCH says
    # what one core of the worker could drive against sites elsewhere.
    print(f"sink CPU:     {sink.sink_cpu * 1e6:>10,.0f} µs per PATCH in the sink's process, "
          f"{sink.sink_system * 1e6:,.0f} of them in the kernel (one core: {1 / sink.sink_cpu:,.0f} PATCH/s); "
          f"the simulated sites {sink.sites_cpu * 1e6:,.0f} µs")


if __name__ == "__main__":
    asyncio.run(main())

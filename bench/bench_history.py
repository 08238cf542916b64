"""What a reconcile pass adds to the permanent log, what replay costs from a checkpoint, per codec (issue 25).

    .local/venv/bin/python bench/bench_history.py [--links 20] [--users 5000] [--passes 10] [--quick]

A federation's history made in compressed time through the real worker (``usync worker``,
memory store, its own process) and the real reconciler (``streams.stages.reconcile``, in this
process) against the simulator (its own process), with every site's events off so that only
passes write:

1. a first pass fills the table; then a pass over the converged table, once as the events
   topic got it before the listings topic ("before": every page, ``Reconcile`` without a
   listings topic, as an older worker group still makes it) and once as now ("after");
   the bytes each added to the permanent topics (events, outcomes, DLQ: keys and values);
2. the same with 1 % of B's usernames changed silently before the pass (the corrections'
   facts and outcomes included); ``--passes`` more passes with drifts and removals between;
3. a checkpoint (``POST /usync/checkpoint/``: its cost per row, from the worker's log), then
   two stretches of changes after it; replay from the beginning, from the checkpoint, and
   ``--until`` the end of each stretch (proportional to what lies after the checkpoint);
   the replayed table against the worker's ``/usync/table/``;
4. the record mix of the events and outcomes topics written again to a topic per codec:
   bytes per record on disk (the segment files) and producer and consumer CPU per record;
5. a pass's cost: its wall time with both sides listed at once, usync's CPU per 300-row page
   in the reconciler (this process) and in the worker's fold, before and after.

``--quick`` (4 links x 500 users, ~60 s) ends with exactly
``history: converged_pass_bytes_ratio=<float> replay_equals_live=<True|False> checkpoint_replay_s=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_fold import cpu_seconds  # noqa: E402
from streams.adapters.kafka.client import client_options  # noqa: E402
from streams.adapters.kafka.producers import RecordSender  # noqa: E402
from streams.adapters.kafka.topics import ensure_topics  # noqa: E402
from streams.adapters.waldur import Clients  # noqa: E402
from streams.contract.config import parse_config  # noqa: E402
from streams.core import as_dict  # noqa: E402
from streams.metrics import Metrics  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.stages.reconcile import Reconcile  # noqa: E402
from streams.worker import tune_gc  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402

CODECS = ("none", "gzip", "lz4", "zstd")
RATES = "requests_per_second = 5000.0\nburst = 5000\nconcurrency = 16\ntimeout = 30.0"


# -- the simulated sites, in a process of their own ------------------------------------------


async def _sites(links: int, users: int, conn) -> None:
    from waldursim import Federation

    async with Federation(broker_enabled=False, seed=7, publish_rate=0) as sim:
        a, b = sim.add_site("a"), sim.add_site("b")
        await sim.start()
        a.events_enabled = b.events_enabled = False
        offerings, b_users = [], []
        for n in range(links):
            pair = []
            for s in (a, b):
                sp, c = s.create_customer(f"sp{n}"), s.create_customer(f"c{n}", owners=[])
                off, proj = s.create_offering(sp, f"hpc{n}"), s.create_project(c, f"p{n}")
                s.create_resource(off, proj, backend_id=f"x{n}")
                pair.append((off, proj))
            (off_a, proj_a), (off_b, proj_b) = pair
            for i in range(users):
                name = f"l{n}u{i}"
                [aou] = a.add_project_member(a.create_user(name), proj_a)
                [bou] = b.add_project_member(b.create_user(name), proj_b)
                a.set_username(aou, name)
                b.set_username(bou, name)
                b_users.append(bou)
            offerings.append((off_a.uuid, off_b.uuid))
        conn.send({"a": (a.url, a.staff_token), "b": (b.url, b.staff_token), "offerings": offerings})
        rng = __import__("random").Random(3)
        loop = asyncio.get_running_loop()
        while True:
            command, arg = await loop.run_in_executor(None, conn.recv)
            if command == "drift":  # B's usernames changed behind everyone's back
                for ou in rng.sample(b_users, arg):
                    b.drift_username(ou, f"{ou.uuid[:8]}-{rng.getrandbits(24):06x}")
                conn.send(arg)
            elif command == "remove":  # B's users gone without an event
                gone = rng.sample(b_users, arg)
                for ou in gone:
                    b.delete_offering_user(ou)
                    b_users.remove(ou)
                conn.send(arg)
            else:
                conn.send(sum(1 for call in a.calls.log if call.method == "PATCH"))
                return


def _run_sites(links: int, users: int, conn) -> None:
    asyncio.run(_sites(links, users, conn))


def config_text(suffix: str, sites: dict, offerings: list) -> str:
    text = (f'app_id = "usync-hist-{suffix}"\nreconcile_interval = 86400\ncheckpoint_interval = 86400\n'
            f'reraise_interval = 5\n[kafka]\nbootstrap_servers = "{KAFKA_BOOTSTRAP}"\n'
            f'events_topic = "hist-{suffix}.events"\ndlq_topic = "hist-{suffix}.dlq"\n'
            f'outcomes_topic = "hist-{suffix}.outcomes"\npartitions = 4\n')
    for name, (url, _token) in sites.items():
        text += f'[sites.{name}]\napi_url = "{url}"\ntoken_env = "HIST_TOKEN_{name.upper()}"\n[sites.{name}.rates]\n{RATES}\n'
    for n, (off_a, off_b) in enumerate(offerings):
        text += (f'[[links]]\nname = "l{n}"\ntarget = {{ site = "a", offering = "{off_a}" }}\n'
                 f'source = {{ site = "b", offering = "{off_b}" }}\n')
    return text


# -- the worker, in a process of its own ----------------------------------------------------


class Worker:
    def __init__(self, path: Path, env: dict) -> None:
        self.port = 17066 + os.getpid() % 1000
        self.log_path = path.parent / "worker.log"
        self.proc = subprocess.Popen(
            [str(ROOT / ".local/venv/bin/usync"), "worker", "--config", str(path), "--store", "memory",
             "--web-port", str(self.port), "--no-reconcile"],
            env=env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.AsyncClient(timeout=120)

    async def ready(self) -> None:
        while True:
            try:
                if (await self.http.get(self.url + "/health/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited; see {self.log_path}")
            await asyncio.sleep(0.2)

    async def metric(self, name: str, label: str = "") -> float:
        text = (await self.http.get(self.url + "/metrics")).text
        return sum(float(v) for labels, v in re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
                   if label in labels)

    async def until(self, name: str, at_least: float, label: str = "", timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while await self.metric(name, label) < at_least:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}{{{label}}} did not reach {at_least}")
            await asyncio.sleep(0.1)

    async def table(self) -> dict:
        return (await self.http.get(self.url + "/usync/table/")).json()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        await self.http.aclose()
        self.proc.terminate()
        self.proc.wait(30)


# -- measuring the topics --------------------------------------------------------------------


async def ends(topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or await _parts(consumer, t))]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def _parts(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 (as streams.adapters.kafka.readers)
    return cluster.partitions_for_topic(topic) or set()


async def records(start: dict[TopicPartition, int], end: dict[TopicPartition, int]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record between two sets of end offsets."""
    wanted = {tp: (start.get(tp, 0), stop) for tp, stop in end.items() if stop > start.get(tp, 0)}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        consumer.assign(list(wanted))
        for tp, (first, _stop) in wanted.items():
            consumer.seek(tp, first)
        remaining = set(wanted)
        while remaining:
            for tp, messages in (await consumer.getmany(*remaining, timeout_ms=2000)).items():
                out.extend((m.key or b"", m.value or b"") for m in messages if m.offset < wanted[tp][1])
                if messages[-1].offset >= wanted[tp][1] - 1:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def size(pairs: list[tuple[bytes, bytes]]) -> int:
    return sum(len(k) + len(v) for k, v in pairs)


class History:
    """The run: the sites, the worker, the reconciler of this process."""

    def __init__(self, config, conn, worker: Worker, clients: Clients, records_: RecordSender) -> None:
        self.config, self.conn, self.worker, self.clients, self.records = config, conn, worker, clients, records_
        kafka = config.kafka
        self.permanent = [kafka.events_topic, kafka.outcomes_topic, kafka.dlq_topic]
        self.metrics = Metrics()
        self.pages = 0
        self.compared = 0.0

    def reconcile(self, differences: bool) -> Reconcile:
        kafka = self.config.kafka
        return Reconcile(self.config.links, self.clients, self.metrics, self.records.emitter(kafka.events_topic), 86400,
                         emit_listing=self.records.emitter(kafka.listings_topic) if differences else None)

    def ask(self, command: str, arg: int = 0) -> int:
        self.conn.send((command, arg))
        return self.conn.recv()

    async def a_pass(self, differences: bool, corrections: int = 0) -> dict[str, float]:
        """One pass; returns its bytes on the permanent topics, wall time, pages and CPU per page."""
        before = await ends(self.permanent)
        corrected = await self.worker.metric("usync_outcomes_total", 'action="corrected"')
        folded = await self.worker.metric("usync_events_folded_total")
        worker_cpu, cpu, began = self.worker.cpu(), time.process_time(), time.perf_counter()
        await self.reconcile(differences).run_pass()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        pages = _total(self.metrics.snapshot_pages) - self.pages
        self.pages += pages
        if differences:
            self.compared += pages
            await self.worker.until("usync_listing_pages_compared_total", self.compared)
        else:
            await self.worker.until("usync_events_folded_total", folded + pages)
        fold_cpu = self.worker.cpu() - worker_cpu
        await self.worker.until("usync_outcomes_total", corrected + corrections, 'action="corrected"')
        await asyncio.sleep(1.0)  # the correct stage's facts, the Unlisted scan: what the pass caused lands
        after = await ends(self.permanent)
        return {"bytes": size(await records(before, after)), "wall": wall, "pages": pages,
                "reconciler_ms": 1000 * cpu / max(pages, 1), "fold_ms": 1000 * fold_cpu / max(pages, 1)}


def _total(counter) -> float:
    return sum(sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total"))


# -- codecs ---------------------------------------------------------------------------------


def kafka_data_dir() -> Path:
    return Path(os.environ.get("USYNC_DATA", ROOT / ".local")) / "kafka" / "data"


async def codecs(mix: list[tuple[bytes, bytes]], suffix: str) -> dict[str, dict[str, float]]:
    """The record mix written to a topic per codec: bytes per record on disk, CPU per record."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    figures: dict[str, dict[str, float]] = {}
    try:
        for codec in CODECS:
            topic = f"hist-{suffix}.codec-{codec}"
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
                "compression.type": "uncompressed" if codec == "none" else codec})])
            producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", linger_ms=5,
                                        max_batch_size=1 << 20, compression_type=None if codec == "none" else codec)
            await producer.start()
            cpu = time.process_time()
            futures = [await producer.send(topic, value, key=key) for key, value in mix]
            await asyncio.gather(*futures)
            produce = time.process_time() - cpu
            await producer.stop()
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None,
                                        auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
            await consumer.start()
            cpu, seen = time.process_time(), 0
            while seen < len(mix):
                for messages in (await consumer.getmany(timeout_ms=2000)).values():
                    seen += len(messages)
            consume = time.process_time() - cpu
            await consumer.stop()
            disk = sum(f.stat().st_size for f in (kafka_data_dir() / f"{topic}-0").glob("*.log"))
            figures[codec] = {"disk": disk / len(mix), "produce_us": 1e6 * produce / len(mix),
                              "consume_us": 1e6 * consume / len(mix), "total": disk}
    finally:
        await admin.close()
    return figures


# -- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    parent, child = multiprocessing.Pipe()
    sites = multiprocessing.get_context("fork").Process(target=_run_sites, args=(args.links, args.users, child),
                                                        daemon=True)
    sites.start()
    setup = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    suffix = uuid.uuid4().hex[:8]
    env = {**os.environ, "HIST_TOKEN_A": setup["a"][1], "HIST_TOKEN_B": setup["b"][1]}
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    path = tmp / "usync.toml"
    path.write_text(config_text(suffix, {"a": setup["a"], "b": setup["b"]}, setup["offerings"]))
    config = parse_config(path.read_text(), env)
    await ensure_topics(config)
    records_ = RecordSender(client_options(config), "bench")
    await records_.start()
    clients = Clients(config, Metrics())
    worker = Worker(path, env)
    history = History(config, parent, worker, clients, records_)
    total_users = args.links * args.users
    try:
        await worker.ready()
        first = await history.a_pass(True)
        print(f"history: {args.links} links x {args.users} users; first pass (an empty table): "
              f"{first['bytes']:,} B, {first['pages']:.0f} pages in {first['wall']:.1f} s")
        converged = {mode: await history.a_pass(mode == "after") for mode in ("before", "after")}
        drift = max(1, total_users // 100)
        changed = {}
        for mode in ("before", "after"):
            history.ask("drift", drift)
            changed[mode] = await history.a_pass(mode == "after", corrections=drift)
        print(f"{'pass':<26}{'before (listings)':>20}{'after (differences)':>22}{'after/before':>14}")
        for what, figures in (("converged", converged), (f"1 % changed ({drift})", changed)):
            b, a = figures["before"]["bytes"], figures["after"]["bytes"]
            print(f"{what:<26}{b:>18,} B{a:>20,} B{a / b:>14.4f}")
        for n in range(args.passes):  # the rest of the history: drifts and removals between passes
            history.ask("drift", drift)
            history.ask("remove", max(1, drift // 5))
            await history.a_pass(True, corrections=drift)
        print(f"{'a pass':<26}{'wall s':>10}{'pages':>8}{'reconciler ms/page':>20}{'fold ms/page':>14}")
        for mode in ("before", "after"):
            f = converged[mode]
            print(f"{'converged, ' + mode:<26}{f['wall']:>10.2f}{f['pages']:>8.0f}{f['reconciler_ms']:>20.2f}"
                  f"{f['fold_ms']:>14.2f}")

        # checkpoints and replay
        started = time.perf_counter()
        taken = (await worker.http.post(worker.url + "/usync/checkpoint/")).json()["checkpoints"]
        took = time.perf_counter() - started
        rows = sum(c["rows"] for c in taken)
        print(f"checkpoint: {rows:,} rows in {len(taken)} partitions in {took:.2f} s "
              f"({1e6 * took / max(rows, 1):.1f} us per row, fence included)")
        instants = []
        for _stretch in range(2):
            for _ in range(args.stretch):
                history.ask("drift", drift)
                await history.a_pass(True, corrections=drift)
            await asyncio.sleep(0.05)
            instants.append(datetime.now(timezone.utc))
        tune_gc()
        whole = await replay(config, from_beginning=True)
        plain = await replay(config)
        untils = [await replay(config, until=instant) for instant in instants]
        live = await worker.table()
        equal = as_dict(plain.state) == live and as_dict(whole.state) == live
        print(f"{'replay':<34}{'envelopes':>12}{'seconds':>10}")
        print(f"{'from the beginning':<34}{whole.folded:>12,}{whole.seconds:>10.2f}")
        print(f"{'from the checkpoint':<34}{plain.folded:>12,}{plain.seconds:>10.2f}")
        for n, done in enumerate(untils, 1):
            print(f"{f'--until {n} stretch(es) after it':<34}{done.folded:>12,}{done.seconds:>10.2f}")
        print(f"replay equals the live table: {equal}")

        kafka = config.kafka
        mix = await records({}, await ends([kafka.events_topic, kafka.outcomes_topic]))
        print(f"{'codec':<8}{'B/record on disk':>18}{'producer us/rec':>17}{'consumer us/rec':>17}  ({len(mix):,} records,"
              f" {size(mix) / len(mix):.0f} B each raw)")
        for codec, f in (await codecs(mix, suffix)).items():
            print(f"{codec:<8}{f['disk']:>18.1f}{f['produce_us']:>17.1f}{f['consume_us']:>17.1f}")
        ratio = converged["after"]["bytes"] / converged["before"]["bytes"]
        print(f"history: converged_pass_bytes_ratio={ratio:.4f} replay_equals_live={equal} "
              f"checkpoint_replay_s={plain.seconds:.2f}")
    finally:
        await worker.stop()
        await records_.stop()
        await clients.close()
        parent.send(("stop", 0))
        sites.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--users", type=int, default=5000, help="users per link")
    parser.add_argument("--passes", type=int, default=10, help="passes with drifts and removals between them")
    parser.add_argument("--stretch", type=int, default=3, help="passes with changes in each stretch after the checkpoint")
    parser.add_argument("--quick", action="store_true", help="4 links x 500 users, 2 passes, stretches of 1 (~60 s)")
    args = parser.parse_args()
    if args.quick:
        args.links, args.users, args.passes, args.stretch = 4, 500, 2, 1
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

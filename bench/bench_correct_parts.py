"""Where the correct stage's CPU per correction goes, part by part (not part of pytest).

    .local/venv/bin/python bench/bench_correct_parts.py [--corrections 4000] [--rounds 3]

The worker's correct stage (``CorrectLoop`` -> ``Corrector``: lanes, both live reads, the
decision, the PATCH, 3 Lookup facts and an outcome each) over requests that all end in a
PATCH, with its two ports replaced in turn, in one process, the rounds alternating:

- ``stage``: sites that answer at once from memory (``OfferingUsers`` in Python, no HTTP)
  and records dropped: the stage's own logic, tasks and encoding;
- ``stage+records``: the same sites, the records sent to Kafka and acknowledged
  (``RecordSender``, as the worker's);

the HTTP calls are what ``bench/bench_http.py`` prints per call (``usync``), ×3 a
correction. CPU is this process's (``os.times``), per correction.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv else HERE  # the tree measured
sys.path.insert(0, str(ROOT))

from streams.adapters.kafka.client import client_options  # noqa: E402
from streams.adapters.kafka.producers import RecordSender  # noqa: E402
from streams.adapters.kafka.topics import ensure_topics  # noqa: E402
from streams.contract.config import parse_config  # noqa: E402
from streams.contract.schema import CorrectionRequest, OfferingUserRecord, request_encoder  # noqa: E402
from streams.metrics import Metrics  # noqa: E402
from streams.stages.correct import Corrector  # noqa: E402
from streams.stages.correct_loop import BATCH, CorrectLoop  # noqa: E402
from streams.stages.dead_letter import DeadLetters  # noqa: E402
from streams.worker import tune_gc  # noqa: E402
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402

from bench_fold import ConsumedRecord  # noqa: E402  (beside this file)

A_OFF, B_OFF = "a" * 32, "b" * 32


class MemorySite:
    """An ``OfferingUsers`` answering from a dict at once: B holds ``<name>_b``, A ``<name>``."""

    def __init__(self, name: str, offering: str, users: dict[str, tuple[str, str]]) -> None:
        self.name, self.offering = name, offering
        self.records = {u: OfferingUserRecord(uuid=u, user_uuid=uuid.uuid4().hex, user_username=user,
                                              offering_uuid=offering, username=username, state="OK")
                        for u, (user, username) in users.items()}

    async def get_offering_user(self, uuid_: str):
        return 200, self.records.get(uuid_)

    async def find_offering_user(self, offering_uuid: str, user_username: str):
        return 404, None

    async def patch_username(self, uuid_: str, username: str):
        record = self.records[uuid_]
        return 200, OfferingUserRecord(uuid=record.uuid, user_uuid=record.user_uuid, user_username=record.user_username,
                                       offering_uuid=record.offering_uuid, username=username, state="OK")


async def run(n: int, emit_event, emit_outcome, metrics: Metrics, links, **wiring) -> float:
    users = [(f"p{i}", uuid.uuid4().hex, uuid.uuid4().hex) for i in range(n)]
    sites = {"a": MemorySite("a", A_OFF, {a: (name, name) for name, a, _ in users}),
             "b": MemorySite("b", B_OFF, {b: (name, f"{name}_b") for name, _, b in users})}
    sink = Corrector(links, sites, metrics, emit_event, emit_outcome, **wiring)  # type: ignore[arg-type]
    lanes = CorrectLoop(sink, DeadLetters(emit_event, metrics))
    consumed = [ConsumedRecord("c", 0, i, request_encoder.encode(CorrectionRequest(
        link="bench", user_username=name, a_offering_user_uuid=a, b_offering_user_uuid=b, desired=f"{name}_b")))
        for i, (name, a, b) in enumerate(users)]
    began = os.times()
    for start in range(0, n, BATCH):
        await lanes.handle(consumed[start:start + BATCH])
    done = os.times()
    return (done.user - began.user + done.system - began.system) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corrections", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="measure the streams package of another checkout")
    args = parser.parse_args()
    tune_gc()
    suffix = uuid.uuid4().hex[:8]
    config = parse_config(f"""app_id = "usync-parts-{suffix}"
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
events_topic = "parts-{suffix}.events"
dlq_topic = "parts-{suffix}.dlq"
outcomes_topic = "parts-{suffix}.outcomes"
partitions = 4
[sites.a]
api_url = "http://127.0.0.1:9/api/"
token_env = "T"
[sites.b]
api_url = "http://127.0.0.1:9/api/"
token_env = "T"
[[links]]
name = "bench"
target = {{ site = "a", offering = "{A_OFF}" }}
source = {{ site = "b", offering = "{B_OFF}" }}
""", {"T": "x"})
    await ensure_topics(config)
    records = RecordSender(client_options(config))
    await records.start()
    links = {link.name: link for link in config.links}

    async def dropped(key: bytes, value: bytes) -> None:
        return None

    print(f"tree: {ROOT}; load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures: dict[str, list[float]] = {"stage": [], "stage+records": []}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        figures["stage"].append(await run(args.corrections, dropped, dropped, Metrics(), links))
        wiring = {"enqueue_event": records.enqueuer(config.kafka.events_topic)} if hasattr(records, "enqueuer") else {}
        figures["stage+records"].append(await run(args.corrections, records.emitter(config.kafka.events_topic),
                                                  records.emitter(config.kafka.outcomes_topic), Metrics(), links,
                                                  **wiring))  # as streams.app wires it
    await records.stop()
    print(f"{args.corrections:,} corrections (each a PATCH), {args.rounds} rounds, {time.perf_counter() - t0:.0f} s; "
          "CPU per correction of this process:")
    for name, runs in figures.items():
        print(f"  {name:<14} {min(runs) * 1e6:5.0f}-{max(runs) * 1e6:<5.0f} µs")
    print("  (+ 3 HTTP calls: bench/bench_http.py's `usync` figure per call)")


if __name__ == "__main__":
    asyncio.run(main())

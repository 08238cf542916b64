"""Poison records never stall a partition (real Kafka, the worker as a subprocess, the simulator).

One test per topic the worker reads: a garbage record written straight to ``<app>-by-link``,
to ``<app>-corrections`` and to the events topic (aiokafka, keyed so it shares the partition
of the link's later records). Each time the worker stays up, the DLQ holds the raw bytes
with topic / partition / offset and the reason, ``usync_dead_lettered_total`` counts it,
``/health`` says degraded, the consumer group's offset moves past the record, and a later
good record on the same partition is folded and corrected (A converges).

Before this, the by-link garbage crashed every worker that restarted on it (the old
tests/app/test_fold_crash.py asserted that crash). The last test injects a correction
whose handling raises (A answers 200 with a body that is not an offering user): it is
dead-lettered with a ``dead-lettered`` outcome while the other users converge, and an
HTTP 503 is still retried (gave-up, then raised again), never dead-lettered.
"""

from __future__ import annotations

from typing import Any

import httpx
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.adapters.kafka.topics import by_link_topic, corrections_topic
from streams.contract.schema import OutcomeAction, dead_letter_decoder, event_key, outcome_decoder, request_decoder
from tests.app.harness import LinkSpec, WorkerProcess, bridge_and_worker, read_all, until, usernames
from tests.support.services import KAFKA_BOOTSTRAP

GARBAGE = b"\x00 not a record of this topic \xff"


async def dead_letters(config: Any) -> list[Any]:
    return [dead_letter_decoder.decode(m.value) for m in await read_all(config.kafka.dlq_topic)]


async def write_garbage(topic: str, key: bytes) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", request_timeout_ms=10_000)
    await producer.start()
    try:
        await until(lambda: producer.partitions_for(topic), 60, f"topic {topic}")
        return await (await producer.send(topic, key=key, value=GARBAGE))  # the key's partition
    finally:
        await producer.stop()


async def committed(group: str, tp: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=10_000)
    await admin.start()
    try:
        position = (await admin.list_consumer_group_offsets(group)).get(tp)
    finally:
        await admin.close()
    return position.offset if position is not None else -1


async def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    r = await worker.get("/metrics")
    assert r is not None and r.status_code == 200
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def poison_then_converge(s: Any, topic_of: Any, key_of: Any, group_of: Any) -> None:
    """The shared acceptance: garbage on a topic, then a good record on its partition."""
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False)
    config = s.config(path)
    a_ou, b_ou = s.add_user("p1")
    worker = s.start_worker(path)
    await worker.ready()
    topic = topic_of(config)
    sent = await write_garbage(topic, key_of(config))

    async def lettered() -> Any:
        return [d for d in await dead_letters(config) if (d.topic, d.partition, d.offset) == (topic, sent.partition, sent.offset)]
    [letter] = await until(lettered, 60, "the garbage on the DLQ")
    assert letter.raw == GARBAGE and letter.reason.startswith("undecodable: ")
    assert await metric(worker, "usync_dead_lettered_total", topic=topic, reason_class="undecodable") == 1
    health = (await worker.get("/health")).json()
    assert health["status"] == "degraded" and health["dead_lettered"] == 1
    tp = TopicPartition(topic, sent.partition)
    await until(lambda: _past(committed(group_of(config), tp), sent.offset), 60, "the commit past the poison record")

    # a later good record on the same partition is handled: a snapshot of B, a correction of A
    s.b.set_username(b_ou, "p1_b")
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.post(worker.url + "/usync/reconcile/")).status_code == 200
    await until(lambda: usernames(s.a, s.offering_a) == {"p1": "p1_b"}, 60, "A to converge past the poison record")
    assert worker.proc.poll() is None, "the worker stopped"
    assert "dead-lettered" in worker.log_text()


async def _past(offset: Any, poison: int) -> bool:
    return await offset > poison


async def test_garbage_on_the_by_link_topic_is_dead_lettered_and_the_partition_moves_on(setup):
    await poison_then_converge(setup, by_link_topic, lambda config: b"hpc", lambda config: config.app_id)


async def test_garbage_on_the_corrections_topic_is_dead_lettered_and_the_partition_moves_on(setup):
    await poison_then_converge(setup, corrections_topic, lambda config: b"hpc:p1", lambda config: f"{config.app_id}-sink")


async def test_garbage_on_the_events_topic_is_dead_lettered_and_the_partition_moves_on(setup):
    def key(config: Any) -> bytes:  # the key of B's snapshot pages
        return event_key(config.links[0].source.site, config.links[0].source.offering).encode()
    await poison_then_converge(setup, lambda config: config.kafka.events_topic, key, lambda config: f"{config.app_id}-route")


async def test_a_correction_that_raises_is_dead_lettered_and_a_503_is_still_retried(setup, bridge):
    s = setup
    names = [f"r{i}" for i in range(4)]
    pairs = {name: s.add_user(name) for name in names}
    # the first reconcile pass (at start) tells the fold A's side; the next is an hour away
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)],
                          rates="requests_per_second = 50.0\nburst = 20\nconcurrency = 8\ntimeout = 2.0")
    config = s.config(path)
    _, worker = await bridge_and_worker(s, bridge, path)
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_1")
    await until(lambda: usernames(s.a, s.offering_a) == {n: f"{n}_1" for n in names}, 90, "A to converge first")

    # r0's offering user on B now answers 200 with a body that is not an offering user
    poison, (_, poison_b) = "r0", pairs["r0"]
    s.b.store.users[poison_b.user].username = None  # "user_username": null
    s.b.faults.update(error_rate=1.0, error_statuses=[503], methods=["GET"])  # and every GET on B is a 503 first
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_2")
    await until(lambda: any(c.fault == "error" for c in s.b.calls.log), 30, "a 503 from B")
    await until(lambda: _gave_up(config), 60, "a gave-up outcome for the 503s")
    s.b.faults.update(error_rate=0.0)

    want = {n: f"{n}_2" for n in names if n != poison}
    await until(lambda: {n: u for n, u in usernames(s.a, s.offering_a).items() if n != poison} == want, 120,
                "the other users to converge (the 503s retried)")
    assert usernames(s.a, s.offering_a)[poison] == "r0_1"

    async def poison_lettered() -> list[Any]:
        return [d for d in await dead_letters(config) if d.reason.startswith("handler-error: ")]
    letters = await until(poison_lettered, 60, "the raising correction on the DLQ")
    assert {request_decoder.decode(d.raw).user_username for d in letters} == {poison}  # never a 503'd user
    assert all(d.topic == corrections_topic(config) and d.offset >= 0 for d in letters)
    outcomes = [outcome_decoder.decode(m.value) for m in await read_all(config.kafka.outcomes_topic)]
    assert {o.user_username for o in outcomes if o.action is OutcomeAction.DEAD_LETTERED} == {poison}
    assert await metric(worker, "usync_outcomes_total", link="hpc", action="dead-lettered") >= 1
    assert worker.proc.poll() is None, "the worker stopped"


async def _gave_up(config: Any) -> bool:
    outcomes = [outcome_decoder.decode(m.value) for m in await read_all(config.kafka.outcomes_topic)]
    return any(o.action is OutcomeAction.GAVE_UP and o.http_status == 503 for o in outcomes)

"""kill -9 mid-stream with a second worker joining, and a flaky API under a rate limit."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.adapters.kafka.topics import by_link_topic
from streams.contract.schema import OutcomeAction, outcome_decoder
from tests.support.services import KAFKA_BOOTSTRAP
from tests.app.harness import LinkSpec, bridge_and_worker, patches, until, usernames

RATES = "requests_per_second = 50.0\nburst = 20\nconcurrency = 8\ntimeout = 2.0"


async def read_outcomes(topic: str) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        out = []
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                return out
            for messages in batch.values():
                out.extend(outcome_decoder.decode(m.value) for m in messages)
    finally:
        await consumer.stop()


async def test_kill_9_restart_and_a_second_worker(setup, bridge):
    s = setup
    n = 30
    pairs = {f"k{i:02d}": s.add_user(f"k{i:02d}") for i in range(n)}
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], rates=RATES)
    _, first = await bridge_and_worker(s, bridge, path)
    s.a.faults.update(latency=0.05)  # slow A down so the kill lands mid-stream

    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    await until(lambda: len(patches(s.a)) >= 3, 30, "the first PATCHes")
    first.kill9()
    in_flight_bound = 8  # Rates.concurrency: at most this many PATCHes can be mid-air at the kill

    s.start_worker(path)
    s.start_worker(path)
    for worker in s.workers[1:]:
        await worker.ready()

    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 90, "A to converge after the kill")
    assert len(patches(s.a)) <= n + in_flight_bound

    # the table recovered (changelogs) and caught up: across both workers, every row is converged
    async def table_converged() -> bool:
        rows: dict = {}
        for worker in s.workers[1:]:
            rows.update((await worker.table())["rows"])
        return len(rows) == n and all(r.get("a_username") == r.get("b_username") == f"{r['user_username']}_b"
                                      for r in rows.values())
    await until(table_converged, 60, "the recovered tables to converge")

    # no correction lost: every user has an outcome that says A was made (or found) equal
    # (A's username changes before the sink writes the outcome: wait for the outcomes too)
    config = s.config(path)

    async def every_user_has_an_outcome() -> bool:
        outcomes = await read_outcomes(config.kafka.outcomes_topic)
        return {o.user_username for o in outcomes if o.action in (OutcomeAction.CORRECTED, OutcomeAction.ALREADY_EQUAL)} == set(pairs)
    await until(every_user_has_an_outcome, 60, "an outcome for every user")


async def test_flaky_api_converges_within_the_rate_limit(setup):
    s = setup
    n = 40
    s.a.events_enabled = s.b.events_enabled = False
    pairs = {f"f{i:02d}": s.add_user(f"f{i:02d}") for i in range(n)}
    for name, (_, b_ou) in pairs.items():
        s.b.set_username(b_ou, f"{name}_b")
    rate, burst = 20.0, 5
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False,
                          rates=f"requests_per_second = {rate}\nburst = {burst}\nconcurrency = 4\ntimeout = 0.5")
    for site in (s.a, s.b):  # 20 % of API calls fail: 5xx, 429 with Retry-After, timeouts
        site.faults.update(error_rate=0.10, throttle_rate=0.05, retry_after=1, timeout_rate=0.05,
                           timeout_seconds=1.0, seed=7)
    worker = s.start_worker(path)
    await worker.ready()

    want = {name: f"{name}_b" for name in pairs}
    await until(lambda: usernames(s.a, s.offering_a) == want, 120, "A to converge under faults")
    assert sum(s.a.faults.stats.values()) > 0 and sum(s.b.faults.stats.values()) > 0

    for site in (s.a, s.b):
        times = sorted(c.time for c in site.calls.log if c.path.startswith("/api/"))
        for window in (1.0, 3.0):
            allowed = burst + rate * window + 1  # +1: arrival stamps are taken server-side
            j = 0
            for i, t in enumerate(times):
                while times[j] < t - window:
                    j += 1
                assert i - j + 1 <= allowed, f"{site.name}: {i - j + 1} calls within {window} s (allowed {allowed})"


async def fold_caught_up(config) -> bool:
    """The worker's group has committed every by-link record (and the router every event)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        for group, topic in ((config.app_id, by_link_topic(config)), (f"{config.app_id}-route", config.kafka.events_topic)):
            committed = {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
                         if tp.topic == topic}
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(config.kafka.partitions)])
            if any(end > committed.get(tp, 0) for tp, end in ends.items()):
                return False
        return True
    finally:
        await consumer.stop()
        await admin.close()


async def test_a_lookup_lost_with_its_worker_is_issued_again(setup, bridge):
    """An event the identity index cannot place waits in the pending table for its lookup; a
    worker killed while the lookup fails must not lose it: the next worker asks again."""
    s = setup
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], rates=RATES)
    _, first = await bridge_and_worker(s, bridge, path, "--no-reconcile")  # no snapshot may fill the index behind the lookup's back

    s.b.faults.update(error_rate=1.0, error_statuses=[503], methods=["GET"])  # B cannot be looked up
    a_ou, b_ou = s.add_user("lena")
    s.b.set_username(b_ou, "lena_b")

    async def parked_on_b() -> bool:
        table = await first.table()
        return any(p["site"] == "b" for p in table["pending"].values())
    await until(parked_on_b, 60, "B's event to wait for its lookup")
    # the parked event's offsets are committed: a new worker will not fold it again
    await until(lambda: fold_caught_up(s.config(path)), 60, "the fold's offsets to be committed")
    first.kill9()
    s.b.faults.update(error_rate=0.0)

    second = s.start_worker(path, "--no-reconcile")
    await second.ready()
    await until(lambda: s.a.offering_user(a_ou).username == "lena_b", 90,
                "the re-issued lookup to let A follow B")

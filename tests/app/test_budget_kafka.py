"""The budget's two Kafka mechanisms on a real broker, in-process and without the simulator
(seconds, not minutes): the demand exchange (streams.adapters.kafka.budget) and the sink's
commit metadata, by which a partition's next owner skips what its last owner finished."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.adapters.budget import TokenBucket
from streams.adapters.kafka.budget import BudgetExchange
from streams.adapters.kafka.consumer import WindowConsumer, done_offsets
from streams.metrics import Metrics
from tests.app.harness import until


async def _topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


class Worker:
    """One worker's side of the exchange: a bucket for site "a", a sender, the running loops."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.options = {"bootstrap_servers": bootstrap}
        self.bucket = TokenBucket(rate=100, burst=10)
        self.exchange = BudgetExchange(self.options, topic, {"a": self.bucket}, {"a": 1.0}, Metrics())
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.exchange.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def share(self) -> float:
        return self.exchange.shares.get("a", 0.0) if self.bucket.lease_until > time.monotonic() else 0.0


async def test_two_workers_split_a_site_by_their_work_and_never_hold_more_than_it(kafka_bootstrap):
    topic = f"t-{uuid.uuid4().hex[:10]}-budget"
    await _topic(kafka_bootstrap, topic)
    one, two = Worker(kafka_bootstrap, topic), Worker(kafka_bootstrap, topic)
    await one.start()
    await two.start()
    sums: list[float] = []

    async def sample() -> None:
        while True:
            sums.append(one.share + two.share)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        await until(lambda: one.share == two.share == 0.5, 15, "an even split while neither has work")
        one.bucket.want(30)  # work for site a on the first worker only
        await until(lambda: (one.share, two.share) == (1.0, 0.0), 10, "the whole budget to the worker with work")
        two.bucket.want(10)
        await until(lambda: two.share > 0.2 and one.share > 0.6, 10, "a split in proportion to the work")
        assert one.share + two.share <= 1.0 + 1e-9
        await two.stop()  # a worker that stops says so: its part is the other's at once, not at the expiry
        await until(lambda: one.exchange.shares["a"] == 1.0, 2, "the leaver's part")
    finally:
        sampler.cancel()
        await one.stop()
    assert max(sums) <= 1.0 + 1e-9, f"the two held {max(sums):.3f} of the budget at once"


async def test_the_next_owner_of_a_partition_skips_what_its_last_owner_finished_above_the_commit(kafka_bootstrap):
    topic, group = f"t-{uuid.uuid4().hex[:10]}-handover", f"g-{uuid.uuid4().hex[:10]}"
    await _topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    for i in range(20):
        await producer.send_and_wait(topic, f"r{i}".encode())
    await producer.stop()
    options = {"bootstrap_servers": kafka_bootstrap}
    loop = asyncio.get_running_loop()

    def first_dispatch(record) -> asyncio.Future:  # the odd ones are done, the even ones never finish
        future = loop.create_future()
        if record.offset % 2:
            future.set_result(None)
        return future

    first = WindowConsumer("first", options, topic, group, first_dispatch, lambda: None, window=100, max_records=100,
                           commit_every=0.1)
    running = asyncio.create_task(first.run())
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    async def committed_done() -> set[int]:
        offsets = await admin.list_consumer_group_offsets(group)
        return {o for meta in offsets.values() for o in done_offsets(meta.metadata, meta.offset)}

    try:
        await until(lambda: committed_done(), 20, "a commit naming the records done above it")
        assert await committed_done() == set(range(1, 20, 2))
    finally:
        running.cancel()  # its owner goes (without finishing the even ones)
        await asyncio.gather(running, return_exceptions=True)
        await admin.close()

    handled: list[int] = []

    def second_dispatch(record) -> asyncio.Future:
        handled.append(record.offset)
        future = loop.create_future()
        future.set_result(None)
        return future

    second = WindowConsumer("second", options, topic, group, second_dispatch, lambda: None, window=100,
                            max_records=100)
    running = asyncio.create_task(second.run())
    try:
        await until(lambda: second.skipped == 10 and len(handled) == 10, 30, "the next owner's pass over the partition")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert handled == list(range(0, 20, 2))  # each odd record was done: not handled again

"""The local Kafka is a real broker: acks=all, idempotent produce, consumer groups."""

import asyncio
import uuid

import aiokafka
import pytest

pytestmark = pytest.mark.services


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sends = [await producer.send(topic, key=b"k%d" % (i % 7), value=b"%d" % i) for i in range(count)]
        for sent in sends:
            await sent
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, group: str, count: int, timeout: float = 60) -> list[bytes]:
    """Up to ``count`` values; polls until then or ``timeout`` (a restarted broker takes a
    few seconds to elect partition leaders, so an empty poll is not the end)."""
    consumer = aiokafka.AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(values) < count and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            values.extend(record.value for records in batches.values() for record in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def test_a_thousand_records_round_trip_through_a_consumer_group(kafka_bootstrap):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topic, 1000)

    values = await consume(kafka_bootstrap, topic, f"g-{topic}", 1000)

    assert sorted(int(v) for v in values) == list(range(1000))


async def test_a_committed_group_resumes_after_its_offset(kafka_bootstrap):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    await produce(kafka_bootstrap, topic, 10)
    assert len(await consume(kafka_bootstrap, topic, group, 10)) == 10

    await produce(kafka_bootstrap, topic, 5)

    resumed = await consume(kafka_bootstrap, topic, group, 5)
    assert sorted(int(v) for v in resumed) == list(range(5))

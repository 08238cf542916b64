"""A producer that failed is replaced once, however many sends saw it fail (real Kafka)."""

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.adapters.kafka.producers import RecordSender
from tests.app.harness import until

pytestmark = pytest.mark.services


async def new_topic(kafka_bootstrap: str, what: str, partitions: int) -> str:
    topic = f"usync-test-{what}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def test_concurrent_failures_replace_the_producer_once_and_sends_go_on(kafka_bootstrap):
    topic = await new_topic(kafka_bootstrap, "replace", 1)
    sender = RecordSender({"bootstrap_servers": kafka_bootstrap})
    await sender.start()
    try:
        failed = await sender.current()
        await sender.send(topic, b"k", b"before")
        # Three sends that saw the same producer fail each ask for a replacement.
        await asyncio.gather(*(sender.replace(failed) for _ in range(3)))
        replacement = await sender.current()
        assert replacement is not failed
        await sender.replace(failed)  # a late report about the old producer changes nothing
        assert await sender.current() is replacement
        await sender.send(topic, b"k", b"after")  # acknowledged by Kafka on the new producer
    finally:
        await sender.stop()


async def test_an_enqueued_record_is_acked_later_and_a_failed_delivery_replaces_the_producer(kafka_bootstrap):
    """RecordSender.enqueue: the correct stage's facts, no task per record (issue 28)."""
    from aiokafka.errors import KafkaTimeoutError

    from streams.errors import KafkaUnavailable

    topic = await new_topic(kafka_bootstrap, "enqueue", 2)
    sender = RecordSender({"bootstrap_servers": kafka_bootstrap})
    await sender.start()
    try:
        acks = [await sender.enqueue(topic, b"site:offering", b"fact %d" % i) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*acks), 30)  # acknowledged by Kafka
        failed = await sender.current()
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_exception(KafkaTimeoutError())
        acked = asyncio.get_running_loop().create_future()
        sender._settle(acked, delivery, failed, topic)
        with pytest.raises(KafkaUnavailable):
            await acked
        await until(lambda: sender.producer not in (None, failed), 30, "a new producer")  # started beside the record
        await (await sender.enqueue(topic, b"k", b"after"))  # acknowledged on the new producer
    finally:
        await sender.stop()

"""Each broker stops and starts through the project's own scripts and serves again."""

import uuid

import aiokafka
import pika
import pytest

from tests.services.test_kafka_smoke import consume, produce

pytestmark = [pytest.mark.services, pytest.mark.disruptive]


def amqp_round_trip(url: str) -> bytes:
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_publish("", queue, b"still here")
        _, _, body = channel.basic_get(queue, auto_ack=True)
        return body


async def test_kafka_stops_and_restarts(kafka_bootstrap, brokers):
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topic, 10)

    brokers["kafka"].stop()
    assert not brokers["kafka"].is_running()
    with pytest.raises(aiokafka.errors.KafkaConnectionError):
        probe = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=2000)
        try:
            await probe.start()
        finally:
            await probe.stop()
    brokers["kafka"].start()

    await produce(kafka_bootstrap, topic, 10)
    assert len(await consume(kafka_bootstrap, topic, f"g-{topic}", 20)) == 20


def test_rabbitmq_stops_and_restarts(rabbitmq, brokers):
    assert amqp_round_trip(rabbitmq.amqp_url) == b"still here"

    brokers["rabbitmq"].stop()
    assert not brokers["rabbitmq"].is_running()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp_round_trip(rabbitmq.amqp_url)
    brokers["rabbitmq"].start()

    assert amqp_round_trip(rabbitmq.amqp_url) == b"still here"

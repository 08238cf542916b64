"""Fixtures shared by every test: the real local brokers (started if down, never mocked)."""

from __future__ import annotations

import pytest

from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ, RabbitMQEndpoints, kafka_broker, rabbitmq_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the local Kafka, started if it is not running."""
    if not kafka_broker.is_running():
        kafka_broker.start()
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def rabbitmq() -> RabbitMQEndpoints:
    """Endpoints of the local RabbitMQ, started if it is not running."""
    if not rabbitmq_broker.is_running():
        rabbitmq_broker.start()
    return RABBITMQ


@pytest.fixture
def brokers():
    """Stop/start control of both brokers; whatever a test stops is running again after it."""
    yield {"kafka": kafka_broker, "rabbitmq": rabbitmq_broker}
    for broker in (kafka_broker, rabbitmq_broker):
        if not broker.is_running():
            broker.start()


def pytest_collection_modifyitems(items):
    # Tests that stop brokers run last, so a failure there cannot cascade into the rest.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)

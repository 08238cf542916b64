"""Fixtures shared by every test: the real local brokers (started if down, never mocked)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ, RabbitMQEndpoints, kafka_broker, kafka_cluster, rabbitmq_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(request):
    """Bootstrap address of the local Kafka, started if it is not running.

    The topics the session creates are deleted at its end if every test passed (a failed
    run keeps them to be read; ``USYNC_KEEP_TOPICS=1`` keeps them always): tens of
    thousands of partitions, after many runs, slow the broker down for everything."""
    if not kafka_broker.is_running():
        kafka_broker.start()
    asyncio.run(_group_coordinator())
    before = asyncio.run(_topics())
    yield KAFKA_BOOTSTRAP
    if request.session.testsfailed or os.environ.get("USYNC_KEEP_TOPICS") or not kafka_broker.is_running():
        return
    try:
        created = asyncio.run(_topics()) - before
        asyncio.run(_delete_topics(sorted(created)))
    except Exception as exc:  # housekeeping: never a reason for the run to fail
        logging.getLogger("tests").warning("could not delete the session's topics: %r", exc)


async def _group_coordinator(timeout: float = 60.0) -> None:
    """Wait until the broker answers FindCoordinator: a fresh broker creates ``__consumer_offsets``
    on the first lookup and says "coordinator not available" for a few seconds (the consumers
    retry, the admin client's group calls a test makes do not)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
    await admin.start()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            try:
                await admin.find_coordinator("usync-tests-coordinator-probe")
                return
            except KafkaError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)  # polling a condition, with a deadline
    finally:
        await admin.close()


async def _topics() -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if not t.startswith("__")}
    finally:
        await admin.close()


async def _delete_topics(names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=60_000)
    await admin.start()
    try:
        for start in range(0, len(names), 200):
            await admin.delete_topics(names[start:start + 200])
    finally:
        await admin.close()


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
            if broker is kafka_broker:
                asyncio.run(_group_coordinator())


@pytest.fixture(scope="session")
def cluster_bootstrap():
    """Bootstrap list of the local 3-node Kafka cluster (services/kafka-cluster.sh), started
    if any node is down, stopped at the session's end only if this session started it."""
    started = not kafka_cluster.is_running()
    if started:
        kafka_cluster.start()
    yield kafka_cluster.bootstrap
    if started:
        kafka_cluster.stop()


@pytest.fixture
def cluster(cluster_bootstrap):
    """Node control of the cluster; whatever node a test stopped or killed is running again after it."""
    yield kafka_cluster
    if not kafka_cluster.is_running():
        kafka_cluster.start()


def pytest_collection_modifyitems(items):
    # Tests that stop brokers run last, so a failure there cannot cascade into the rest.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)

"""The simulator's pytest fixtures, on the brokers tests/support/services.py points at.

``waldursim.testing.sim_federation`` always uses the default RabbitMQ (``BrokerAdmin()``);
this one is the same fixture with the configured endpoints, so a test run against
isolated brokers (USYNC_PORT_OFFSET, RABBITMQ_*_PORT) publishes to them. Import both
into a conftest.py or test module:

    from tests.support.sim import sim_federation, sim_offline  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from waldursim.site import Federation
from waldursim.testing import TEST_SEED, sim_offline  # noqa: F401  (needs no broker)

from tests.support.services import RABBITMQ


@pytest.fixture
async def sim_federation() -> AsyncIterator[Federation]:
    """A federation on the configured RabbitMQ. Add sites, then `await sim_federation.start()`."""
    federation = Federation(RABBITMQ.broker_admin(), seed=TEST_SEED, publish_rate=0)
    await federation.check_broker()  # fail loudly (not skip) if RabbitMQ is not there
    try:
        yield federation
    finally:
        await federation.stop()

"""Pytest fixtures for code that tests against simulated Waldur sites.

Import them into a conftest.py:

    from waldursim.testing import sim_federation, sim_offline  # noqa: F401

`sim_federation` talks to the local RabbitMQ (guest; ``USYNC_PORT_OFFSET`` and the per-port
variables as services/common.sh) and, on teardown, deletes every
vhost and broker user its sites created. Publishing is unlimited in tests (rate 0)
so `await site.publisher.drain()` returns quickly; set `site.publisher.rate` to test
rate limits. `sim_offline` has no broker at all (REST-only tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .broker import BrokerAdmin
from .site import Federation

TEST_SEED = 20240226


@pytest.fixture
async def sim_federation() -> AsyncIterator[Federation]:
    """A federation on the local RabbitMQ. Add sites, then `await sim_federation.start()`."""
    federation = Federation(BrokerAdmin.local(), seed=TEST_SEED, publish_rate=0)
    await federation.check_broker()  # fail loudly (not skip) if RabbitMQ is not there
    try:
        yield federation
    finally:
        await federation.stop()


@pytest.fixture
async def sim_offline() -> AsyncIterator[Federation]:
    """A federation without a broker: REST, faults and routing (logged in site.outgoing)."""
    federation = Federation(broker_enabled=False, seed=TEST_SEED, publish_rate=0)
    try:
        yield federation
    finally:
        await federation.stop()

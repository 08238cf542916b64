"""Fixtures of the app's acceptance tests: real Kafka, real RabbitMQ, the simulator."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridges.app import Bridge
from tests.support.sim import sim_federation, sim_offline  # noqa: F401

from tests.app.harness import Setup, make_setup


@pytest.fixture
async def setup(sim_federation, tmp_path, kafka_bootstrap, rabbitmq):  # noqa: F811
    s: Setup = make_setup(sim_federation, tmp_path)
    await sim_federation.start()
    try:
        yield s
    finally:
        for worker in s.workers:
            worker.stop()


@pytest.fixture
async def bridge():
    """Run the bridge in-process for a config: ``await bridge(config)``; stopped at teardown."""
    running: list[tuple[Bridge, asyncio.Task]] = []

    async def start(config):
        b = Bridge(config, health_port=0)
        running.append((b, asyncio.create_task(b.run(install_signal_handlers=False))))
        return b

    yield start
    for b, task in running:
        b.stop()
        try:
            await asyncio.wait_for(task, 40)
        except Exception as exc:  # report, do not mask the test's own result
            logging.getLogger("tests").warning("bridge stop: %r", exc)

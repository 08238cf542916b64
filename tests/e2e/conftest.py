"""The pipeline fixture of the end-to-end tests: sites a and b, and the usync processes."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Pipeline
from tests.support.sim import sim_federation  # noqa: F401


@pytest.fixture
async def pipeline(sim_federation, tmp_path, kafka_bootstrap, rabbitmq):  # noqa: F811
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    p = Pipeline(sim_federation, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()

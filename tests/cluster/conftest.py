"""The pipeline of the end-to-end harness on the 3-node Kafka cluster."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Pipeline
from tests.support.sim import sim_federation  # noqa: F401


@pytest.fixture
async def cluster_pipeline(sim_federation, tmp_path, cluster, rabbitmq):  # noqa: F811
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    p = Pipeline(sim_federation, tmp_path, bootstrap=cluster.bootstrap)
    try:
        yield p
    finally:
        p.stop_all()

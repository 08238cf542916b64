"""The app tests' fixtures (simulated sites on real RabbitMQ, real Kafka, the bridge), reused.

The simulator's federation comes from tests/support/sim.py (the configured RabbitMQ, as
USYNC_PORT_OFFSET says), not waldursim.testing (always the default broker).
"""

from tests.app.conftest import bridge, setup  # noqa: F401
from tests.support.sim import sim_federation  # noqa: F401

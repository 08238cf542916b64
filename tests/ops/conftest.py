"""The app tests' fixtures (simulated sites on real RabbitMQ, real Kafka, the bridge), reused."""

from tests.app.conftest import bridge, setup  # noqa: F401
from waldursim.testing import sim_federation  # noqa: F401

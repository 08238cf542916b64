"""The simulator's pytest fixtures (waldursim.testing), on the brokers tests/support/services.py
points at: both read USYNC_PORT_OFFSET and RABBITMQ_*_PORT the way services/common.sh does.
Import both into a conftest.py or test module:

    from tests.support.sim import sim_federation, sim_offline  # noqa: F401
"""

from waldursim.testing import sim_federation, sim_offline  # noqa: F401

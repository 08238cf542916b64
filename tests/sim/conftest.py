"""Fixtures for the simulator's own tests (the same ones other suites can import)."""

from tests.support.sim import sim_federation, sim_offline  # noqa: F401

"""Fixtures for the simulator's own tests (the same ones other suites can import)."""

from waldursim.testing import sim_federation, sim_offline  # noqa: F401

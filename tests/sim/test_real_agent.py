"""The real agent (PyPI waldur-site-agent 1.0.7 + waldur-site-agent-waldur 1.0.7, the pins in
bench/agent-requirements.txt) against simulator sites on the real RabbitMQ.

The agent runs in its own venv (.local/agent-venv, installed here when missing: about 20 s),
driven by bench/agent_driver.py: its own identity registration, ``register_queue`` and
STOMP-over-WebSocket subscription on B, its own event handlers, its own periodic
username reconciliation. These tests fail when the simulator gets what it relies on
wrong (on the simulator
before issue 15, the restarted agent got 405 on the identity PUT and never subscribed).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from pathlib import Path

import pytest

from bench.agent_venv import AGENT_DRIVER, ensure_agent_venv
from demo.stack import populate
from tests.support.services import RABBITMQ

IDENTITY_PUT = "PUT /api/marketplace-site-agent-identities/{uuid}/"
IDENTITY_POST = "POST /api/marketplace-site-agent-identities/"
# The agent imports ~3000 generated client modules (3-4 s) before it does anything.
START_TIMEOUT = 90.0
EVENT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def agent_python() -> Path:
    return ensure_agent_venv()


class AgentProcess:
    """bench/agent_driver.py as a child: its stdout lines (READY, DONE, one JSON line per
    handled event, the agent's log on stderr merged in) arrive on a queue as they are printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, python: Path, *args: str) -> "AgentProcess":
        proc = await asyncio.create_subprocess_exec(
            str(python), str(AGENT_DRIVER), *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            await self._queue.put(line)
        await self._queue.put(None)  # end of output: the agent exited

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    async def expect(self, wanted, timeout: float = EVENT_TIMEOUT) -> str:
        """The next line for which ``wanted(line)`` holds; fails with the agent's output if it
        exits or the timeout passes first."""
        async def scan() -> str:
            while True:
                line = await self._queue.get()
                if line is None:
                    raise AssertionError(f"the agent exited ({await self.proc.wait()}) first:\n{self.tail()}")
                if wanted(line):
                    return line
        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no matching line from the agent within {timeout} s:\n{self.tail()}") from None

    async def expect_event(self, action: str) -> dict:
        line = await self.expect(lambda s: s.startswith('{"event"') and json.loads(s)["action"] == action)
        return json.loads(line)

    async def wait(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait()


def agent_config(a, b, pair, tmp_path: Path) -> Path:
    cfg = {
        "a_url": a.url, "a_token": a.staff_token, "a_offering": pair.a.uuid,
        "b_url": b.url, "b_token": b.staff_token, "b_offering": pair.b.uuid,
        "b_customer": b.store.offerings[pair.b.uuid].customer,
        "ws_host": RABBITMQ.host, "ws_port": RABBITMQ.web_stomp_port, "ws_path": "/ws",
    }
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


async def change_and_see_it_synced(agent: AgentProcess, a, b, pair, index: int, username: str) -> None:
    """A username change on B reaches the agent as ``update`` then ``username_set``; its
    handler's full sync for the ``update`` PATCHes A (done before the event line is printed)."""
    a_ou, b_ou = pair.users[index]
    b.set_username(b_ou, username)
    await agent.expect_event("update")
    assert a.store.offering_users[a_ou.uuid].username == username
    await agent.expect_event("username_set")


async def test_agent_registers_receives_and_restarts(sim_federation, agent_python, tmp_path):
    b, a = sim_federation.add_site("b"), sim_federation.add_site("a")
    [pair] = populate(a, b, users=20, offerings=["hpc"], a_converged=True)
    await sim_federation.start()
    config = agent_config(a, b, pair, tmp_path)

    agent = await AgentProcess.start(agent_python, str(config))
    try:
        await agent.expect(lambda s: s == "READY", START_TIMEOUT)
        assert b.calls.counts[IDENTITY_POST] == 1 and b.calls.counts[IDENTITY_PUT] == 0
        await change_and_see_it_synced(agent, a, b, pair, 3, "user00003-v2")
    finally:
        await agent.stop()

    # Restart against the same site: the identity exists, so the agent PUTs it and reuses
    # its consumer queue.
    agent = await AgentProcess.start(agent_python, str(config))
    try:
        await agent.expect(lambda s: s == "READY", START_TIMEOUT)
        assert b.calls.counts[IDENTITY_POST] == 1 and b.calls.counts[IDENTITY_PUT] == 1
        [identity] = b.store.identities.values()
        assert identity.version and identity.dependencies and identity.last_restarted is not None
        await change_and_see_it_synced(agent, a, b, pair, 7, "user00007-v2")
    finally:
        await agent.stop()


async def test_periodic_username_sync_across_650_users(sim_federation, agent_python, tmp_path):
    """One periodic pass lists B and A by pages of 100 and PATCHes exactly the mismatches."""
    b, a = sim_federation.add_site("b"), sim_federation.add_site("a")
    [pair] = populate(a, b, users=650, offerings=["hpc"], a_converged=True)
    await sim_federation.start()
    drifted = a.drift(pair.a, 37)
    mismatches = len({ou.uuid for ou in drifted})
    n_b = sum(1 for _a, b_ou in pair.users if b_ou.username)
    n_a = len(pair.users)
    a.calls.reset()
    b.calls.reset()

    agent = await AgentProcess.start(agent_python, "--periodic", str(agent_config(a, b, pair, tmp_path)))
    await agent.expect(lambda s: s == "DONE", START_TIMEOUT)
    assert await agent.wait() == 0, agent.tail()

    assert all(a.store.offering_users[a_ou.uuid].username == b_ou.username for a_ou, b_ou in pair.users)
    calls = sum(a.calls.counts.values()) + sum(b.calls.counts.values())
    assert calls == math.ceil(n_b / 100) + math.ceil(n_a / 100) + mismatches, (a.calls.counts, b.calls.counts)
    assert a.calls.counts["PATCH /api/marketplace-offering-users/{uuid}/"] == mismatches
    assert set(a.calls.statuses) == {200} and set(b.calls.statuses) == {200}

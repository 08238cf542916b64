"""kill -9 of the bridge mid-stream, then a restart: every event still reaches Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from streams.contract.config import parse_config
from tests.bridge.harness import TopicReader, bridge_toml, last_occurrences, per_queue, populate, wait_for
from tests.bridge.test_bridge_relay import published
from tests.support.services import RABBITMQ
from tests.support.sim import sim_federation  # noqa: F401

pytestmark = pytest.mark.services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProcess:
    """`usync bridge` as operators run it, in its own process."""

    def __init__(self, config_path, environ: dict[str, str], port: int, log_path) -> None:
        self.args = [sys.executable, "-m", "streams.cli", "bridge", "--config", str(config_path)]
        self.env = {**os.environ, **environ}
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(f"http://127.0.0.1:{self.port}/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(60)


async def test_kill_9_mid_stream_then_restart_loses_nothing(sim_federation, kafka_bootstrap, rabbitmq, tmp_path):
    sim_federation.add_site("a")
    sim_federation.add_site("b")
    await sim_federation.start()
    world = populate(sim_federation, offerings=2, users=100)
    environ: dict[str, str] = {}
    port = free_port()
    toml = bridge_toml(world, RABBITMQ.web_stomp_url, kafka_bootstrap, environ, web_port=port)
    (tmp_path / "usync.toml").write_text(toml)
    topic = parse_config(toml, environ).kafka.events_topic
    bridge = BridgeProcess(tmp_path / "usync.toml", environ, port, tmp_path / "bridge.log")
    try:
        bridge.start()
        await wait_for(bridge.ready, 60, "the bridge to be ready")

        for site in sim_federation.sites.values():
            site.publisher.rate = 1500  # a steady stream, so the kill lands mid-way
        for round_ in range(10):
            for site in sim_federation.sites.values():
                for offering in world.offerings[site.name]:
                    for ou in world.offering_users[offering]:
                        site.set_username(ou, f"k{round_}-{ou[:12]}")
        async with TopicReader(kafka_bootstrap, topic) as reader:
            await reader.read_until(1500, timeout=60)
            bridge.kill()
            assert len(reader.records) < 8000, "the stream ended before the kill; nothing was tested"
            bridge.start()
            await sim_federation.drain(timeout=120)
            expected = published(sim_federation)

            async def everything_arrived() -> bool:
                await reader.read_until(len(reader.records) + 1, timeout=1)
                return {(e.queue, e.event_id) for e in reader.envelopes()} >= set(expected)

            await wait_for(everything_arrived, 120, "every published event in Kafka")
        assert bridge.terminate() == 0, (tmp_path / "bridge.log").read_text()[-3000:]
    finally:
        bridge.stop_if_running()  # a failed assertion must not leave a bridge behind

    got = [(e.queue, e.event_id) for e in reader.envelopes()]
    assert len(expected) == 8000
    assert {queue: last_occurrences(ids) for queue, ids in per_queue(got).items()} == per_queue(expected)

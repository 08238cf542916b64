"""The local brokers, as the tests see them: endpoints plus stop/start through the
project's own scripts (services/*.sh), so a test exercises exactly what operators run.

Which brokers: the same environment variables as services/common.sh, defaults unchanged
(Kafka 127.0.0.1:9092, RabbitMQ 5672/61613/15674/15672, node usync@localhost, data in
.local/). ``USYNC_PORT_OFFSET`` is added to every default port; ``KAFKA_PORT``,
``RABBITMQ_AMQP_PORT``, ``RABBITMQ_STOMP_PORT``, ``RABBITMQ_WEB_STOMP_PORT`` and
``RABBITMQ_MGMT_PORT`` override one each; ``USYNC_DATA`` and ``RABBITMQ_NODENAME`` reach
the scripts through the inherited environment. Tests that stop brokers should run
against their own pair, e.g.::

    export USYNC_DATA=$PWD/.local/e2e USYNC_PORT_OFFSET=100 RABBITMQ_NODENAME=usync-e2e@localhost
    services/rabbitmq.sh start && services/kafka.sh start && .local/venv/bin/pytest tests/e2e
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from waldursim.broker import local_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "services"


class ServiceError(RuntimeError):
    pass


def _run(name: str, command: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / f"{name}.sh"), command, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@dataclass(frozen=True)
class Broker:
    """One local broker controlled by services/<name>.sh."""

    name: str

    def start(self) -> None:
        result = _run(self.name, "start")
        if result.returncode != 0:
            raise ServiceError(f"{self.name} did not start:\n{result.stderr}")

    def stop(self) -> None:
        result = _run(self.name, "stop")
        if result.returncode != 0:
            raise ServiceError(f"{self.name} did not stop:\n{result.stderr}")

    def is_running(self) -> bool:
        return _run(self.name, "status", timeout=30).returncode == 0


port = local_port  # a broker port from the environment: ``$name``, else ``default + $USYNC_PORT_OFFSET``


KAFKA_PORT = port("KAFKA_PORT", 9092)
AMQP_PORT = port("RABBITMQ_AMQP_PORT", 5672)
STOMP_PORT = port("RABBITMQ_STOMP_PORT", 61613)
WEB_STOMP_PORT = port("RABBITMQ_WEB_STOMP_PORT", 15674)
MGMT_PORT = port("RABBITMQ_MGMT_PORT", 15672)
AMQPS_PORT = port("RABBITMQ_AMQPS_PORT", 5671)
STOMPS_PORT = port("RABBITMQ_STOMPS_PORT", 61614)
WEB_STOMPS_PORT = port("RABBITMQ_WEB_STOMPS_PORT", 15673)


@dataclass(frozen=True)
class RabbitMQEndpoints:
    host: str = "127.0.0.1"
    amqp_port: int = AMQP_PORT
    stomp_port: int = STOMP_PORT
    web_stomp_port: int = WEB_STOMP_PORT
    management_port: int = MGMT_PORT
    amqps_port: int = AMQPS_PORT  # the TLS listeners, with $USYNC_DATA/tls/server.pem
    stomps_port: int = STOMPS_PORT
    web_stomps_port: int = WEB_STOMPS_PORT
    admin_user: str = "guest"
    admin_password: str = "guest"

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.admin_user}:{self.admin_password}@{self.host}:{self.amqp_port}/%2F"

    @property
    def stomp_url(self) -> str:
        return f"stomp://{self.host}:{self.stomp_port}"

    @property
    def web_stomp_url(self) -> str:
        return f"ws://{self.host}:{self.web_stomp_port}/ws"

    @property
    def tls_urls(self) -> dict[str, str]:
        """The TLS listeners' broker URLs by scheme (``wss``, ``stomp+ssl``, ``amqps``)."""
        return {"wss": f"wss://{self.host}:{self.web_stomps_port}/ws", "stomp+ssl": f"stomp+ssl://{self.host}:{self.stomps_port}",
                "amqps": f"amqps://{self.host}:{self.amqps_port}"}

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    def broker_admin(self):
        """The simulator's view of this broker (waldursim.BrokerAdmin)."""
        from waldursim.broker import BrokerAdmin

        return BrokerAdmin(management_url=self.management_url, amqp_host=self.host, amqp_port=self.amqp_port,
                           username=self.admin_user, password=self.admin_password)


KAFKA_BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
#: Kafka's SASL_SSL listener (services/kafka.sh): SCRAM-SHA-512, the test CA's certificate.
KAFKA_SASL_SSL_BOOTSTRAP = f"127.0.0.1:{port('KAFKA_SASL_SSL_PORT', 9094)}"
KAFKA_SASL_USER = os.environ.get("KAFKA_SASL_USER") or "usync"
KAFKA_SASL_PASSWORD = os.environ.get("KAFKA_SASL_PASSWORD") or "usync-test-password"
RABBITMQ = RabbitMQEndpoints()


def add_scram_user(user: str, password: str) -> None:
    """A SCRAM-SHA-512 user on the running local Kafka (``services/kafka.sh add-scram-user``:
    Kafka's own kafka-configs), e.g. to fix a process's wrong credentials at run time."""
    result = _run("kafka", "add-scram-user", user, password, timeout=120)
    if result.returncode != 0:
        raise ServiceError(f"could not add the SCRAM user {user}:\n{result.stderr}")
kafka_broker = Broker("kafka")
rabbitmq_broker = Broker("rabbitmq")


@dataclass(frozen=True)
class KafkaCluster:
    """The local 3-node Kafka cluster of services/kafka-cluster.sh; node 1, 2 or 3 can be
    stopped, killed (SIGKILL) and started on its own."""

    nodes: tuple[int, ...] = (1, 2, 3)

    def port(self, node: int) -> int:
        return 19092 + 2 * node + int(os.environ.get("USYNC_PORT_OFFSET") or 0)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in self.nodes)

    def _do(self, command: str, node: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        args = [str(SCRIPTS / "kafka-cluster.sh"), command] + ([str(node)] if node is not None else [])
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)

    def _must(self, command: str, node: int | None = None) -> None:
        result = self._do(command, node)
        if result.returncode != 0:
            raise ServiceError(f"kafka-cluster {command} {node or ''} failed:\n{result.stderr}")

    def start(self, node: int | None = None) -> None:
        self._must("start", node)

    def stop(self, node: int | None = None) -> None:
        self._must("stop", node)

    def kill(self, node: int) -> None:
        self._must("kill", node)

    def is_running(self, node: int | None = None) -> bool:
        return self._do("status", node, timeout=30).returncode == 0


kafka_cluster = KafkaCluster()

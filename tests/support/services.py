"""The local brokers, as the tests see them: endpoints plus stop/start through the
project's own scripts (services/*.sh), so a test exercises exactly what operators run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "services"


class ServiceError(RuntimeError):
    pass


def _run(name: str, command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / f"{name}.sh"), command],
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


@dataclass(frozen=True)
class RabbitMQEndpoints:
    host: str = "127.0.0.1"
    amqp_port: int = 5672
    stomp_port: int = 61613
    web_stomp_url: str = "ws://127.0.0.1:15674/ws"
    management_url: str = "http://127.0.0.1:15672"
    admin_user: str = "guest"
    admin_password: str = "guest"

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.admin_user}:{self.admin_password}@{self.host}:{self.amqp_port}/%2F"

    @property
    def stomp_url(self) -> str:
        return f"stomp://{self.host}:{self.stomp_port}"


KAFKA_BOOTSTRAP = "127.0.0.1:9092"
RABBITMQ = RabbitMQEndpoints()
kafka_broker = Broker("kafka")
rabbitmq_broker = Broker("rabbitmq")

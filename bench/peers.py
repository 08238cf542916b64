"""The systems bench/bench_peers.py runs, each as its own process: the usync bridge, and Kafka
Connect standalone with a RabbitMQ source connector (the peers).

Installed under ``.local/connect/`` on first use, from Maven Central through
bench/connect/pom.xml (re-resolved when the pom changes, as services/kafka.sh does for the
broker): the worker's classpath in ``lib/``, one directory per connector under ``plugins/``
(Connect's plugin isolation: each connector sees its own jars first).

The two peers, and what they do with a message (read from their classes, see the pom):

- ``jcustenborder`` (kafka-connect-rabbitmq 0.0.2.16): acks each message with its own
  ``basicAck`` in ``commitRecord``, after the Kafka write (at-least-once); calls
  ``basicQos`` after ``basicConsume``, so its prefetch setting never applies (RabbitMQ
  pushes the whole queue into the task's memory); ``poll`` sleeps 1 s when it found nothing.
  Its record value is a Struct (envelope, basic properties, body bytes), written here with
  Connect's JsonConverter (``schemas.enable=false``): the body is base64 in a JSON document.
- ``camel`` (camel-spring-rabbitmq-source-kafka-connector 4.18.0): a Spring AMQP listener
  (acknowledge mode AUTO) acks once the message is handed to Camel's in-memory queue,
  before the Kafka write; the record value is the body (ByteArrayConverter).

Producer settings as the bridge's: acks=all, idempotence on, linger 2 ms (the bridge's
own linger), batches up to 256 KiB, no compression. What differs: the Java producer keeps
up to 5 requests in flight per broker (aiokafka: 1) and Connect's converters serialise
each record; the bridge builds its envelope itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from demo.stack import Child
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ, port

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "bench/connect/pom.xml"
HOME = ROOT / ".local/connect"
LIB, PLUGINS = HOME / "lib", HOME / "plugins"
CAMEL_PACKAGE = "org.apache.camel.kafkaconnector:camel-spring-rabbitmq-source-kafka-connector:4.18.0:tar.gz:package"
# The worker's REST listener (unused by the bench, but always opened): 8083 + the offset.
REST_PORT = port("USYNC_CONNECT_REST_PORT", 8083)
PEERS = ("jcustenborder", "camel")
JAVA_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
PRODUCER = {  # the bridge's settings (bridges/outlet.py, bridges/relay.py)
    "producer.acks": "all", "producer.enable.idempotence": "true", "producer.linger.ms": "2",
    "producer.batch.size": str(256 * 1024), "producer.compression.type": "none",
}


def _mvn(*args: str) -> None:
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), *args], check=True, timeout=1800)


def install(log=print) -> None:
    """Resolve the worker and both connectors into .local/connect/ unless already there
    for this pom (Maven Central only, as services/kafka.sh)."""
    stamp = HOME / ".pom"
    if stamp.exists() and stamp.read_bytes() == POM.read_bytes():
        return
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise RuntimeError("Kafka Connect needs java and mvn: run `make install` (it installs both)")
    log("resolving Kafka Connect 3.8.1 and the two RabbitMQ connectors with Maven (first run only)")
    shutil.rmtree(HOME, ignore_errors=True)
    _mvn("-P", "runtime", "dependency:copy-dependencies", f"-DoutputDirectory={LIB}", "-DincludeScope=runtime")
    _mvn("-P", "jcustenborder", "dependency:copy-dependencies", f"-DoutputDirectory={PLUGINS / 'jcustenborder'}",
         "-DincludeScope=runtime")
    with tempfile.TemporaryDirectory() as tmp:
        _mvn("dependency:copy", f"-Dartifact={CAMEL_PACKAGE}", f"-DoutputDirectory={tmp}")
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        jars = Path(tmp).glob("camel-spring-rabbitmq-source-kafka-connector/*.jar")
        (PLUGINS / "camel").mkdir(parents=True)
        for jar in jars:
            shutil.move(str(jar), PLUGINS / "camel" / jar.name)
    shutil.copy(POM, stamp)


def worker_properties(offsets: Path, peer: str) -> dict[str, str]:
    value = ("org.apache.kafka.connect.json.JsonConverter" if peer == "jcustenborder"
             else "org.apache.kafka.connect.converters.ByteArrayConverter")
    return {
        "bootstrap.servers": KAFKA_BOOTSTRAP,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter", "key.converter.schemas.enable": "false",
        "value.converter": value, "value.converter.schemas.enable": "false",
        "offset.storage.file.filename": str(offsets), "offset.flush.interval.ms": "10000",
        "plugin.path": str(PLUGINS), "plugin.discovery": "only_scan", "listeners": f"http://127.0.0.1:{REST_PORT}",
        **PRODUCER,
    }


def connector_properties(peer: str, queue: str, topic: str, prefetch: int) -> dict[str, str]:
    if peer == "jcustenborder":
        return {
            "name": f"bench-{peer}", "tasks.max": "1",
            "connector.class": "com.github.jcustenborder.kafka.connect.rabbitmq.RabbitMQSourceConnector",
            "kafka.topic": topic, "rabbitmq.queue": queue, "rabbitmq.host": RABBITMQ.host,
            "rabbitmq.port": str(RABBITMQ.amqp_port), "rabbitmq.username": "guest", "rabbitmq.password": "guest",
            "rabbitmq.prefetch.count": str(prefetch),  # set as the bridge's; applied after basicConsume (no effect)
        }
    kamelet = "camel.kamelet.spring-rabbitmq-source"
    return {
        "name": f"bench-{peer}", "tasks.max": "1",
        "connector.class": "org.apache.camel.kafkaconnector.springrabbitmqsource.CamelSpringrabbitmqsourceSourceConnector",
        "topics": topic, f"{kamelet}.host": RABBITMQ.host, f"{kamelet}.port": str(RABBITMQ.amqp_port),
        f"{kamelet}.username": "guest", f"{kamelet}.password": "guest", f"{kamelet}.queues": queue,
        f"{kamelet}.exchangeName": "amq.direct", f"{kamelet}.autoDeclare": "false",
    }


def _write(path: Path, properties: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    return path


LOG4J = "log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n" \
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n" \
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"


class Service:
    """One system under test as a child process (demo.stack.Child: it dies with the bench;
    the measured pid is the child itself)."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.child: Child | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.child = Child(self.name, self.command(), os.environ.copy(), self.workdir / "service.log")
        return self.child.proc.pid

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def kill(self) -> None:
        if self.alive():
            self.child.proc.kill()  # type: ignore[union-attr]
            self.child.proc.wait(30)  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM (each system's graceful stop: the bridge acks what Kafka has, Connect stops
        its task and commits), SIGKILL after 30 s."""
        if self.child is not None:
            self.child.stop(timeout=30)

    def tail(self, chars: int = 3000) -> str:
        return self.child.tail(chars) if self.child is not None else ""


class UsyncBridge(Service):
    """``usync bridge`` for one queue (the TOML of bench_bridge.bridge_config_text)."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        super().__init__(workdir)
        self.config_text = config_text

    def command(self) -> list[str]:
        path = self.workdir / "usync.toml"
        path.write_text(self.config_text)
        usync = str(Path(sys.executable).with_name("usync"))
        return [usync, "--log-level", "warning", "bridge", "--config", str(path), "--health-port", "0"]


class ConnectWorker(Service):
    """One standalone worker running one connector."""

    def __init__(self, workdir: Path, peer: str, queue: str, topic: str, prefetch: int = 1000) -> None:
        super().__init__(workdir)
        self.peer, self.queue, self.topic, self.prefetch = peer, queue, topic, prefetch

    def command(self) -> list[str]:
        install()
        worker = _write(self.workdir / "worker.properties", worker_properties(self.workdir / "offsets", self.peer))
        connector = _write(self.workdir / "connector.properties",
                           connector_properties(self.peer, self.queue, self.topic, self.prefetch))
        (self.workdir / "log4j.properties").write_text(LOG4J)
        return ["java", *JAVA_OPTS, f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
                "-cp", f"{LIB}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)]

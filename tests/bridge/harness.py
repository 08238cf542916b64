"""A bridge under test: simulated sites, a usync config pointing at them, the bridge
running in-process, and a reader of what reached Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import aiokafka
import msgspec

from streams.contract.config import Config, parse_config
from streams.contract.schema import DeadLetter, Envelope, envelope_decoder
from waldursim import Federation, Site


@dataclass
class World:
    """Two simulated sites with ``offerings`` Slurm offerings each and ``users`` per offering."""

    federation: Federation
    offerings: dict[str, list[str]] = field(default_factory=dict)
    offering_users: dict[str, list[str]] = field(default_factory=dict)  # offering -> ou uuids
    tokens: dict[str, str] = field(default_factory=dict)


def populate(federation: Federation, sites: tuple[str, ...] = ("a", "b"), offerings: int = 2, users: int = 10) -> World:
    world = World(federation)
    for name in sites:
        site: Site = federation[name]
        provider = site.create_customer(f"sp-{name}")
        client = site.create_customer(f"client-{name}")
        project = site.create_project(client, f"project-{name}")
        manager = site.create_user(f"usync-{name}")
        world.tokens[name] = manager.token
        world.offerings[name] = []
        for i in range(offerings):
            offering = site.create_offering(provider, f"hpc-{name}-{i}")
            site.create_resource(offering, project, f"alloc-{name}-{i}")
            site.add_offering_manager(manager, offering)
            world.offerings[name].append(offering.uuid)
        for j in range(users):
            user = site.create_user(f"user{j:05d}")
            for ou in site.add_project_member(user, project):
                world.offering_users.setdefault(ou.offering, []).append(ou.uuid)
    return world


def bridge_config(world: World, broker_url: str, kafka_bootstrap: str, environ: dict[str, str],
                  site_lines: tuple[str, ...] = (), **kafka: str) -> Config:
    return parse_config(bridge_toml(world, broker_url, kafka_bootstrap, environ, site_lines=site_lines, **kafka), environ)


def bridge_toml(world: World, broker_url: str, kafka_bootstrap: str, environ: dict[str, str], web_port: int = 0,
                site_lines: tuple[str, ...] = (), **kafka: str) -> str:
    """The TOML of a usync config for ``world``; token variables are added to ``environ``;
    ``site_lines`` go into every site (e.g. ``broker_ca_file = "..."``)."""
    suffix = uuid.uuid4().hex[:8]
    lines = [f'app_id = "usync-test-{suffix}"', f"web_port = {web_port}", "[kafka]", f'bootstrap_servers = "{kafka_bootstrap}"',
             f'events_topic = "events-{suffix}"', f'dlq_topic = "dlq-{suffix}"', f'outcomes_topic = "outcomes-{suffix}"',
             "partitions = 4"]
    lines += [f'{k} = "{v}"' for k, v in kafka.items()]
    lines += ["[rabbitmq]", "prefetch = 500"]
    for name, site in world.federation.sites.items():
        env = f"USYNC_TEST_TOKEN_{name.upper()}_{suffix}"
        environ[env] = world.tokens[name]
        lines += [f"[sites.{name}]", f'api_url = "{site.url}"', f'token_env = "{env}"',
                  f'broker_url = "{broker_url}"', "register = true", *site_lines]
    a, b = world.offerings["a"], world.offerings["b"]
    for i, (target, source) in enumerate(zip(a, b)):
        lines += ["[[links]]", f'name = "link{i}"', f'target = {{ site = "a", offering = "{target}" }}',
                  f'source = {{ site = "b", offering = "{source}" }}']
    return "\n".join(lines)


def rename_all(world: World, prefix: str) -> None:
    """Rename every offering user of ``world`` (on a Slurm offering: update + username_set)."""
    for site in world.federation.sites.values():
        for offering in world.offerings[site.name]:
            for ou in world.offering_users[offering]:
                site.set_username(ou, f"{prefix}{ou[:12]}")


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


class TopicReader:
    """Reads a topic from the beginning, keeping every record in arrival order per partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = aiokafka.AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
            group_id=None, metadata_max_age_ms=1000,
        )
        self.records: list[aiokafka.ConsumerRecord] = []

    async def __aenter__(self) -> "TopicReader":
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def read_until(self, count: int, timeout: float) -> list[aiokafka.ConsumerRecord]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            batches = await self.consumer.getmany(timeout_ms=500)
            for records in batches.values():
                self.records.extend(records)
        return self.records

    def envelopes(self) -> list[Envelope]:
        return [envelope_decoder.decode(r.value) for r in self.records]

    def dead_letters(self) -> list[DeadLetter]:
        return [msgspec.json.decode(r.value, type=DeadLetter) for r in self.records]


def per_queue(ids: list[tuple[str, str]]) -> dict[str, list[str]]:
    """[(queue, id)] -> {queue: [ids in order]}."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for queue, event_id in ids:
        grouped[queue].append(event_id)
    return dict(grouped)


def last_occurrences(sequence: list[str]) -> list[str]:
    """The sequence with each repeated id kept only at its last position (redelivery after a
    teardown repeats a tail; the last copies must be in published order)."""
    seen: set[str] = set()
    kept = []
    for item in reversed(sequence):
        if item not in seen:
            seen.add(item)
            kept.append(item)
    return kept[::-1]

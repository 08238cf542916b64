"""Kafka plumbing shared by every usync process: client options from the config
(TLS/SASL included) and idempotent creation of the topics with their retention."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.config import Config

log = logging.getLogger("usync.kafka")

# The events, DLQ and outcomes topics are the audit log and the replay source:
# nothing is ever deleted by age or size unless the operator says so.
UNLIMITED = {"retention.ms": "-1", "retention.bytes": "-1"}


def client_options(config: Config) -> dict[str, Any]:
    """Connection options for any aiokafka client, secrets resolved from the environment."""
    kafka = config.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(config)
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            options["sasl_plain_password"] = config.secret(kafka.sasl_password_env).reveal()
    return options


def by_link_topic(config: Config) -> str:
    """The worker's repartition topic: envelopes keyed by link name (see streams.router)."""
    return f"{config.app_id}-by-link"


def corrections_topic(config: Config) -> str:
    """The sink's requests, keyed ``<link>:<user>``. Created before faust starts: a worker
    that leads the first assignment before its metadata knows a topic it has just created
    assigns that topic to nobody."""
    return f"{config.app_id}-corrections"


def ssl_context(config: Config) -> ssl.SSLContext:
    """TLS to Kafka: the configured CA (or the system's), a client certificate for mutual TLS."""
    kafka = config.kafka
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    context.check_hostname = kafka.ssl_check_hostname
    return context


def topic_specs(config: Config, *, worker: bool = False) -> list[NewTopic]:
    kafka = config.kafka
    specs = [
        NewTopic(name, kafka.partitions, kafka.replication_factor, topic_configs=dict(UNLIMITED))
        for name in (kafka.events_topic, kafka.dlq_topic, kafka.outcomes_topic)
    ]
    if worker:  # derived from the events topic, so the broker's default retention is enough
        for name in (by_link_topic(config), corrections_topic(config)):
            specs.append(NewTopic(name, kafka.partitions, kafka.replication_factor))
    return specs


async def ensure_topics(config: Config, request_timeout_ms: int = 10_000, *, worker: bool = False) -> list[str]:
    """Create the usync topics that are missing (with ``worker``, its repartition topic too);
    return the names created. The router must never produce to a topic the broker would
    auto-create with one partition."""
    admin = AIOKafkaAdminClient(**client_options(config), request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(config, worker=worker) if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race; fine
            log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()

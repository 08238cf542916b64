"""The usync topics: names, and idempotent creation with their retention."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.adapters.kafka.client import KafkaAccess, client_options, kafka_transient
from streams.contract.config import Config
from streams.retry import retry_forever

log = logging.getLogger("usync.kafka")

# The events, DLQ and outcomes topics are the audit log and the replay source, and the
# checkpoints topic is where replay starts: nothing is ever deleted by age or size unless
# the operator says so.
UNLIMITED = {"retention.ms": "-1", "retention.bytes": "-1"}


def topic_codec(codec: str) -> dict[str, str]:
    """The topic's ``compression.type`` for a configured codec: what the broker stores."""
    return {"compression.type": "uncompressed" if codec == "none" else codec}


def producer_codec(codec: str) -> str | None:
    """aiokafka's ``compression_type`` for a configured codec (batches compressed before sending)."""
    return None if codec == "none" else codec


def by_link_topic(config: Config) -> str:
    """The worker's repartition topic: envelopes keyed by link name (see streams.stages.route)."""
    return f"{config.app_id}-by-link"


def corrections_topic(config: Config) -> str:
    """The sink's requests, keyed ``<link>:<user>``. Created before faust starts: a worker
    that leads the first assignment before its metadata knows a topic it has just created
    assigns that topic to nobody."""
    return f"{config.app_id}-corrections"


def budget_topic(config: Config) -> str:
    """The workers' demand for the sites' API budgets (``streams.adapters.kafka.budget``):
    one partition, so that every worker reads every record in order; coordination, not
    history, so it keeps an hour."""
    return f"{config.app_id}-budget"


#: A demand record counts for seconds; an hour is for reading what the exchange did.
BUDGET_RETENTION = {"retention.ms": str(3_600_000), "cleanup.policy": "delete"}


def topic_specs(config: Config, *, worker: bool = False) -> list[NewTopic]:
    kafka, codecs = config.kafka, config.kafka.compression

    def spec(name: str, codec: str, retention: dict[str, str]) -> NewTopic:
        return NewTopic(name, kafka.partitions, kafka.replication_factor,
                        topic_configs=retention | kafka.replica_configs | topic_codec(codec))

    listings = {"retention.ms": str(int(config.listings_retention * 1000)), "retention.bytes": "-1"}
    specs = [spec(kafka.events_topic, codecs.events, UNLIMITED), spec(kafka.dlq_topic, codecs.dlq, UNLIMITED),
             spec(kafka.outcomes_topic, codecs.outcomes, UNLIMITED),
             spec(kafka.listings_topic, codecs.listings, listings),
             spec(kafka.checkpoints_topic, codecs.checkpoints, UNLIMITED),
             NewTopic(kafka.user_index_topic, kafka.index_partitions, kafka.replication_factor,
                      topic_configs=UNLIMITED | kafka.replica_configs | topic_codec(codecs.events))]
    if worker:  # derived from the events topic, so the broker's default retention is enough
        specs += [spec(name, codecs.internal, {}) for name in (by_link_topic(config), corrections_topic(config))]
        specs.append(NewTopic(budget_topic(config), 1, kafka.replication_factor,
                              topic_configs=BUDGET_RETENTION | kafka.replica_configs | topic_codec(codecs.internal)))
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


async def wait_for_topics(config: Config, *, worker: bool = False, access: KafkaAccess | None = None) -> list[str]:
    """:func:`ensure_topics`, waiting for Kafka however long it is away or refuses us
    (docs/invariants.md, 5); ``access`` hears why it refuses (one ERROR, ``/health``)."""
    access = access or KafkaAccess(client_options(config))
    return await retry_forever(lambda: access.attempt(lambda: ensure_topics(config, worker=worker)),
                               "creating the topics (Kafka not ready)", transient=kafka_transient)

"""The reconciler: REST snapshots of every qualifying link, written as SnapshotPage facts.

It decides nothing itself: the fold reads the pages like any other fact and marks every
listed (link, user) dirty, so a mismatch no event announced becomes a correction
request through the same path as an event-driven one.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer

from streams.config import Config, Link
from streams.kafka import client_options, ensure_topics
from streams.metrics import Metrics
from streams.schema import Envelope, SnapshotPage, Source, envelope_encoder, event_key
from streams.sink import Emit
from streams.waldur import Clients

log = logging.getLogger("usync.reconciler")

SOURCE_STATES = ["OK"]


def jittered(interval: float, rng: random.Random) -> float:
    """±10 %, so workers restarted together do not hammer the APIs in step."""
    return interval * rng.uniform(0.9, 1.1)


async def snapshot_offering(clients: Clients, metrics: Metrics, emit: Emit, link: Link, site: str,
                            offering: str, states: list[str]) -> int:
    """List one offering through every page; write each page; return the users seen."""
    snapshot_id = uuid.uuid4().hex
    seen = 0
    asked = datetime.now(timezone.utc)  # a page is as old as its request (see streams.core.fold)
    async for page, total, users, last in clients[site].list_offering_users(offering, states):
        envelope = Envelope(
            event_id=f"{snapshot_id}:{page}", site=site, source=Source.SNAPSHOT, offering_uuid=offering,
            received_at=asked,
            body=SnapshotPage(snapshot_id=snapshot_id, offering_uuid=offering, states=states, page=page,
                              last=last, total=total, users=users),
        )
        await emit(event_key(site, offering).encode(), envelope_encoder.encode(envelope))
        metrics.snapshot_pages.labels(link.name, site).inc()
        seen += len(users)
        asked = datetime.now(timezone.utc)  # the generator asks for the next page when resumed
    return seen


async def reconcile_pass(config: Config, clients: Clients, metrics: Metrics, emit: Emit) -> dict[str, int]:
    """One pass over every link; returns users listed per qualifying link."""
    done: dict[str, int] = {}
    try:
        for link in config.links:
            if not link.reconcile:
                log.info("skipping link %s: reconcile = false", link.name)
                continue
            b = await snapshot_offering(clients, metrics, emit, link, link.source.site, link.source.offering, SOURCE_STATES)
            a = await snapshot_offering(clients, metrics, emit, link, link.target.site, link.target.offering,
                                        list(link.target_states))
            done[link.name] = a + b
            log.info("reconciled link %s: %d B users, %d A users listed", link.name, b, a)
    except Exception:
        metrics.reconcile_passes.labels("failed").inc()
        raise
    metrics.reconcile_passes.labels("ok").inc()
    return done



async def reconcile_once(config: Config) -> dict[str, int]:
    """``usync reconcile``: one pass outside the worker (ops, tests), then exit."""
    await ensure_topics(config)
    metrics = Metrics()
    clients = Clients(config, metrics)
    producer = AIOKafkaProducer(**client_options(config), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        async def emit(key: bytes, value: bytes) -> None:
            await producer.send_and_wait(config.kafka.events_topic, value=value, key=key)

        return await reconcile_pass(config, clients, metrics, emit)
    finally:
        await producer.stop()
        await clients.close()

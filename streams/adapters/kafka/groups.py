"""What Kafka knows of a consumer group's members: which version of usync they run.

The route stage's consumer names itself :data:`ROUTE_CLIENT_ID` (a worker that predates
the listings topic used aiokafka's default, ``aiokafka-<version>``), so the reconciler
asks the group coordinator whether every member of ``<app>-route`` reads the listings
topic before it writes a pass there: group membership is Kafka's, no protocol of ours.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

from streams.adapters.kafka.client import kafka_transient
from streams.retry import retry_forever

log = logging.getLogger("usync.kafka")

#: The client id of the route stage's consumer since the listings topic (2026-12).
ROUTE_CLIENT_ID: Final = "usync-route-listings"


async def member_client_ids(options: dict[str, Any], group: str, timeout_ms: int = 10_000) -> list[str]:
    """The client id of every member of ``group`` (DescribeGroups at its coordinator)."""
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    ids = []
    for response in responses:
        for described in response.groups:
            if described[0]:  # a coordinator loading, moving: asked again
                raise for_code(described[0])(f"describing group {group}")
            members = described[5]  # (error_code, group_id, state, protocol_type, protocol, members, ...)
            ids.extend(member[1] for member in members)  # (member_id, client_id, client_host, metadata, assignment)
    return ids


def every_member_reads_listings(options: dict[str, Any], group: str) -> Callable[[], Awaitable[bool]]:
    """Asks the route group whether every member is a worker that compares listings."""
    async def ask() -> bool:  # waits out Kafka like the pass's own writes would: a guess could go either way
        ids = await retry_forever(lambda: member_client_ids(options, group), f"describing the route group {group}",
                                  transient=kafka_transient)
        old = [client_id for client_id in ids if client_id != ROUTE_CLIENT_ID]
        if old:
            log.info("route group %s: %d of %d members predate the listings topic (%s)", group, len(old), len(ids),
                     ", ".join(sorted(set(old))))
        return not old
    return ask

"""The audit's sources, wired: usync's side from the topics (:class:`KafkaFacts`) and Waldur's
from the site's API (streams/adapters/waldur_events.py), for ``usync audit`` (:func:`audit_site`).

usync's side: its PATCHes on a site (outcomes topic) and the broker events of the site it
folded (events topic), between two times, read without a consumer group.

Each partition is read from the first offset at or after ``start`` to the first at or
after ``end`` (Kafka's time index: ``offsets_for_times``), so a site-day is read, not the
whole history. On the events topic only records keyed ``<site>:`` are decoded (the key is
``<site>:<offering_uuid>``): other sites' records cost a byte comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from streams.adapters.tls import site_api_context
from streams.adapters.waldur import SiteClient
from streams.adapters.waldur_events import WaldurEventLog
from streams.contract.config import Config, ConfigError, Link, Rates
from streams.contract.schema import Envelope, OfferingUserEvent, Origin, Outcome, OutcomeAction, normalize_uuid
from streams.core.audit import Patch, Report, Sighting, Window
from streams.metrics import Metrics
from streams.ops.audit import Audit, site_offerings
from streams.ops.kafka_read import aware, partitions_of, reader, start_offsets
from streams.ops.topics import topic_names

_outcome = msgspec.json.Decoder(Outcome)
_envelope = msgspec.json.Decoder(Envelope)
_BROKER = (Origin.STOMP, Origin.AMQP)
#: Broker events that carry the offering user's username (a delete names the one it had: not a change).
_CARRY_USERNAME = frozenset({"create", "update", "username_set", "attribute_update"})


class KafkaFacts:
    """:class:`streams.ops.audit.UsyncFacts` on the topics of ``config``."""

    def __init__(self, config: Config, progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.progress = progress or (lambda _line: None)
        self.records = 0  # read from Kafka (both topics)

    async def read(self, site: str, links: Sequence[Link], start: datetime,
                   end: datetime) -> tuple[list[Patch], list[Sighting]]:
        names = topic_names(self.config)
        targeting = {link.name for link in links if link.target.site == site}
        patches: list[Patch] = []
        sightings: list[Sighting] = []

        def outcome(_key: bytes, value: bytes) -> None:
            o = _outcome.decode(value)
            if o.action is OutcomeAction.CORRECTED and o.link in targeting and o.offering_user_uuid:
                patches.append(Patch(link=o.link, user_username=o.user_username,
                                     offering_user_uuid=normalize_uuid(o.offering_user_uuid), old=o.observed or "",
                                     new=o.desired or "", at=aware(o.at), cause_event_id=o.cause_event_id))

        prefix = f"{site}:".encode()

        def event(key: bytes, value: bytes) -> None:
            if not key.startswith(prefix):
                return
            e = _envelope.decode(value)
            body = e.body
            if e.origin in _BROKER and isinstance(body, OfferingUserEvent) and body.action in _CARRY_USERNAME \
                    and body.username is not None and e.site == site:
                sightings.append(Sighting(event_id=e.event_id, offering_user_uuid=normalize_uuid(body.offering_user_uuid),
                                          username=body.username, received_at=aware(e.received_at)))

        await self._between(names["outcomes"], start, end, outcome)
        self.progress(f"usync: {len(patches)} PATCHes on {site} in the outcomes topic")
        await self._between(names["events"], start, end, event)
        self.progress(f"usync: {len(sightings)} broker events of {site} in the events topic")
        return patches, sightings

    async def _between(self, topic: str, start: datetime, end: datetime, handle: Callable[[bytes, bytes], Any]) -> None:
        """Every record of ``topic`` written in ``[start, end)`` by Kafka's time index, to ``handle``.
        A record that does not decode (a stray writer) is skipped: the audit reads, it does not judge."""
        async with reader(self.config, max_partition_fetch_bytes=4 * 1024 * 1024) as consumer:
            partitions = await partitions_of(consumer, topic)
            if not partitions:
                raise SystemExit(f"usync audit: topic {topic} does not exist")
            first = await start_offsets(consumer, partitions, start)
            stop = await start_offsets(consumer, partitions, end)
            todo = {tp: stop[tp] for tp in partitions if first[tp] < stop[tp]}
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, first[tp])
            while todo:
                batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=10_000)
                for tp, messages in batches.items():
                    for m in messages:
                        if m.offset < todo.get(tp, -1):
                            self.records += 1
                            try:
                                handle(m.key or b"", m.value)
                            except msgspec.DecodeError:
                                pass
                    if tp in todo and await consumer.position(tp) >= todo[tp]:
                        del todo[tp]


async def audit_site(config: Config, site: str, window: Window, *, rate: float | None = None,
                     progress: Callable[[str], None] | None = None) -> Report:
    """Audit ``site`` over ``window``: its API read at its configured budget (``rate``: fewer
    requests per second, e.g. while the workers are busy on it), the topics read at once."""
    if site not in config.sites:
        raise ConfigError(f"unknown site {site!r} (configured: {', '.join(sorted(config.sites))})")
    links, offerings = site_offerings(config, site)
    if not links:
        raise ConfigError(f"site {site!r} is on no link: nothing to audit")
    settings = config.sites[site]
    rates = settings.rates if rate is None else Rates(**{**msgspec.structs.asdict(settings.rates),
                                                          "requests_per_second": rate})
    client = SiteClient(site, settings.api_url, config.site_token(site), rates, Metrics(),
                        ssl_context=site_api_context(settings))
    try:
        waldur = WaldurEventLog(client, settings.api_url, progress)
        report = await Audit(site, links, offerings, waldur, KafkaFacts(config, progress)).run(window)
        report.calls = waldur.calls
        return report
    finally:
        await client.close()

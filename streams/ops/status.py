"""``usync status``: per link, what the workers hold and how far behind they are.

- users, drift and rejected rows (A refused B's username; the first users named): the workers' web views (``/usync/table/``, ``/usync/drift/``); each worker
  holds the links of its partitions, so the answers of every worker given are merged;
- last event, last reconcile, last outcome: the tails of the events and outcomes topics
  (``scan`` records per partition; older facts show as unknown);
- lag: the consumer group (the app id) on the events-topic partitions of the link's two
  offerings plus the repartition topic's partition of the link.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import httpx
import msgspec
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from rich.table import Table

from streams.contract.config import Config, Link
from streams.core.routing import compile_routes
from streams.adapters.kafka.client import client_options
from streams.ops.kafka_read import REQUEST_TIMEOUT_MS, aware, partitions_of, reader
from streams.contract.schema import Envelope, ListingSummary, Outcome, SnapshotPage, Origin, event_key

HTTP_TIMEOUT: Final = 10.0
_EVENT_SOURCES: Final = (Origin.STOMP, Origin.AMQP)


class LinkStatus(msgspec.Struct, kw_only=True):
    link: str
    target: str
    source: str
    reconcile: bool
    users: int | None = None
    drift: int | None = None
    rejected: int | None = None
    rejected_users: list[str] = []
    last_event: datetime | None = None
    last_reconcile: datetime | None = None
    last_outcome: datetime | None = None
    lag: int | None = None


class StatusReport(msgspec.Struct, kw_only=True):
    links: list[LinkStatus]
    group: str
    group_lag: int | None = None
    workers: dict[str, str] = {}  # url -> "ok" or the error
    errors: list[str] = []


@dataclass
class _Tails:
    last_event: dict[str, datetime] = field(default_factory=dict)
    last_reconcile: dict[str, datetime] = field(default_factory=dict)
    last_outcome: dict[str, datetime] = field(default_factory=dict)


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partitioner (the bridge and faust use it)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _later(seen: dict[str, datetime], name: str, moment: datetime) -> None:
    moment = aware(moment)
    if name not in seen or moment > seen[name]:
        seen[name] = moment


# -- the workers' views ----------------------------------------------------------------

class _View(msgspec.Struct):
    """One link as one worker holds it."""

    users: int = 0
    drift: int = 0
    rejected: int = 0
    rejected_users: list[str] = []


async def _worker_view(client: httpx.AsyncClient, url: str) -> dict[str, _View]:
    """Per link: users, drift and rejected rows of one worker."""
    table = (await client.get(url.rstrip("/") + "/usync/table/")).raise_for_status().json()
    views: dict[str, _View] = {}
    for key in table.get("rows", {}):
        views.setdefault(key.split(":", 1)[0], _View()).users += 1
    drift_view = (await client.get(url.rstrip("/") + "/usync/drift/")).raise_for_status().json()
    for name, d in drift_view.get("links", {}).items():
        view = views.setdefault(name, _View())
        view.drift, view.rejected = int(d.get("drift", 0)), int(d.get("rejected", 0))
        view.rejected_users = [r["user"] for r in d.get("rejected_users", [])]
    return views


async def worker_views(urls: list[str], headers: dict[str, str] | None = None,
                       ) -> tuple[dict[str, _View], dict[str, str]]:
    """Per link the view of the worker holding it (most rows wins: a standby may hold a
    stale copy); and each worker's state. ``headers``: the operator token
    (``Config.web_headers``)."""
    merged: dict[str, _View] = {}
    states: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers=headers) as client:
        results = await asyncio.gather(*(_worker_view(client, u) for u in urls), return_exceptions=True)
    for url, result in zip(urls, results):
        if isinstance(result, BaseException):
            states[url] = f"unreachable: {type(result).__name__}: {result}"
            continue
        states[url] = "ok"
        for link, candidate in result.items():
            if link not in merged or candidate.users > merged[link].users:
                merged[link] = candidate
    return merged, states


# -- the topics' tails -----------------------------------------------------------------

async def _read_tail(consumer: Any, topic: str, scan: int) -> list[bytes]:
    partitions = await partitions_of(consumer, topic)
    if not partitions:
        return []
    consumer.assign(partitions)
    end = await consumer.end_offsets(partitions)
    begin = await consumer.beginning_offsets(partitions)
    remaining = {tp for tp in partitions if end[tp] > begin[tp]}
    for tp in partitions:
        consumer.seek(tp, max(begin[tp], end[tp] - scan))
    values: list[bytes] = []
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
        for tp, messages in batches.items():
            values.extend(m.value for m in messages if m.offset < end[tp])
        for tp in list(remaining):
            if await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
    return values


async def topic_tails(config: Config, scan: int) -> _Tails:
    tails = _Tails()
    routes = compile_routes(config.links)
    envelope = msgspec.json.Decoder(Envelope)
    outcome = msgspec.json.Decoder(Outcome)
    async with reader(config) as consumer:
        for value in await _read_tail(consumer, config.kafka.events_topic, scan):
            try:
                e = envelope.decode(value)
            except msgspec.DecodeError:
                continue
            for link, _side in routes.of_envelope(e):
                if e.origin in _EVENT_SOURCES:
                    _later(tails.last_event, link.name, e.received_at)
                elif isinstance(e.body, ListingSummary) or (isinstance(e.body, SnapshotPage) and e.body.last):
                    _later(tails.last_reconcile, link.name, e.received_at)  # a listing's summary, or an older last page
    async with reader(config) as consumer:
        for value in await _read_tail(consumer, config.kafka.outcomes_topic, scan):
            try:
                o = outcome.decode(value)
            except msgspec.DecodeError:
                continue
            _later(tails.last_outcome, o.link, o.at)
    return tails


# -- consumer lag ----------------------------------------------------------------------

async def group_lag(config: Config) -> dict[TopicPartition, int]:
    """Lag of the worker's consumer group per partition it has committed."""
    admin = AIOKafkaAdminClient(**client_options(config), request_timeout_ms=REQUEST_TIMEOUT_MS)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(config.app_id)
    finally:
        await admin.close()
    committed = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
    if not committed:
        return {}
    async with reader(config) as consumer:
        end = await consumer.end_offsets(list(committed))
    return {tp: max(0, end[tp] - offset) for tp, offset in committed.items()}


def link_lag(config: Config, link: Link, lag: dict[TopicPartition, int]) -> int:
    partitions = config.kafka.partitions
    events = config.kafka.events_topic
    keys = {event_key(link.target.site, link.target.offering), event_key(link.source.site, link.source.offering)}
    tps = {TopicPartition(events, partition_of(k, partitions)) for k in keys}
    tps.add(TopicPartition(f"{config.app_id}-by-link", partition_of(link.name, partitions)))
    return sum(lag.get(tp, 0) for tp in tps)


# -- the report ------------------------------------------------------------------------

async def gather_status(config: Config, workers: list[str], scan: int = 2000, timeout: float = 60.0) -> StatusReport:
    errors: list[str] = []

    async def guarded(what: str, coro: Any, default: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except Exception as exc:  # one source down must not hide the others
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return default

    (views, states), tails, lag = await asyncio.gather(
        guarded("workers", worker_views(workers, config.web_headers()), ({}, {u: "not asked" for u in workers})),
        guarded("topics", topic_tails(config, scan), _Tails()),
        guarded("consumer lag", group_lag(config), None),
    )
    links = []
    for link in config.links:
        view = views.get(link.name)
        links.append(LinkStatus(
            link=link.name, target=f"{link.target.site}:{link.target.offering}",
            source=f"{link.source.site}:{link.source.offering}", reconcile=link.reconcile,
            users=view.users if view else None, drift=view.drift if view else None,
            rejected=view.rejected if view else None, rejected_users=view.rejected_users if view else [],
            last_event=tails.last_event.get(link.name),
            last_reconcile=tails.last_reconcile.get(link.name), last_outcome=tails.last_outcome.get(link.name),
            lag=None if lag is None else link_lag(config, link, lag),
        ))
    return StatusReport(links=links, group=config.app_id, group_lag=None if lag is None else sum(lag.values()),
                        workers=states, errors=errors)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def status_table(report: StatusReport) -> Table:
    table = Table(title=f"usync status (group {report.group}, lag {_count(report.group_lag)})")
    for column in ("link", "target ← source", "users", "drift", "rejected", "last event", "last reconcile",
                   "last outcome", "lag"):
        table.add_column(column, justify="right" if column in ("users", "drift", "lag") else "left")
    for s in report.links:
        drift = _count(s.drift) if not s.drift else f"[red]{s.drift:,}[/red]"
        refused = _count(s.rejected) if not s.rejected else \
            f"[red]{s.rejected:,}[/red]\n" + ", ".join(s.rejected_users[:5]) + (" …" if s.rejected > 5 else "")
        table.add_row(s.link, f"{s.target}\n← {s.source}", _count(s.users), drift, refused, _when(s.last_event),
                      _when(s.last_reconcile) if s.reconcile else "off", _when(s.last_outcome), _count(s.lag))
    return table

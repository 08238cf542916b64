"""The fold stage: one batch of by-link records -> the table, correction requests, lookups.

Order matters for at-least-once (docs/invariants.md, 1): a batch's correction requests
are acknowledged by Kafka first, then the state that implies them is written, and only
then may the batch be committed. A worker killed in between folds the batch again from
a table without it, and asks again (a request sent twice is harmless: the correct stage
verifies before it PATCHes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from streams.contract.schema import CorrectionRequest, Envelope, envelope_encoder, request_encoder
from streams.core import FoldResult, LookupNeeded, Routes, Row, fold_by_link, needing_correction
from streams.core.listing import Listings
from streams.metrics import Metrics
from streams.ports import Emit, FoldTables, LinkGroup
from streams.retry import retry_forever
from streams.stages.dead_letter import UNDECODABLE, DeadLetters
from streams.stages.lookups import Lookups
from streams.stages.route import unpack

log = logging.getLogger("usync.fold")

FOLD_BATCH = 64  # by-link records, each an array of up to route.MAX_RECORD_ENVELOPES

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_envelope = msgspec.json.Decoder(Envelope)


def envelopes_of(group: LinkGroup, dead: DeadLetters, letters: list[Awaitable[None]]) -> list[tuple[str, Envelope]]:
    """The group's envelopes; what does not decode goes to ``letters`` (DLQ writes to await).

    The route stage checks only an envelope's address, so one bad envelope can share a
    record with good ones: a record that does not decode whole is decoded envelope by
    envelope, and only the bad ones are dead-lettered (the fast path stays one decode).
    """
    items: list[tuple[str, Envelope]] = []
    for value, (topic, partition, offset) in zip(group.values, group.places):
        try:
            items.extend((group.link, envelope) for envelope in unpack(value))
            continue
        except msgspec.DecodeError:
            pass
        try:
            parts = _raw_list.decode(value)
        except msgspec.DecodeError as exc:
            letters.append(dead.send(topic, partition, offset, value, UNDECODABLE, f"not a list of envelopes: {exc}"))
            continue
        for part in parts:
            try:
                items.append((group.link, _envelope.decode(part)))
            except msgspec.DecodeError as exc:
                letters.append(dead.send(topic, partition, offset, bytes(part), UNDECODABLE, f"envelope: {exc}"))
    return items


def correction_request(row: Row) -> CorrectionRequest:
    return CorrectionRequest(
        link=row.link, user_username=row.user_username,
        a_offering_user_uuid=row.a_offering_user_uuid, b_offering_user_uuid=row.b_offering_user_uuid,
        desired=row.b_username, cause_event_id=row.b_event_id or row.a_event_id or "",
        observed_at=max(row.b_observed_at, row.a_observed_at), b_read_at=row.b_read_at,
    )


def correction_key(row: Row, routes: Routes) -> bytes:
    """The request's key on ``<app>-corrections``: the link's *source* and the user, so the
    requests of every link fed by one source for one user reach one worker together and
    share one live read of the source (``Corrector._read_source``)."""
    link = routes.by_name.get(row.link)
    if link is None:
        return f"{row.link}:{row.user_username}".encode()
    return f"{link.source.site}:{link.source.offering}:{row.user_username}".encode()


class RequestCorrection:
    """Sends "look at (link, user)" to the correct stage and waits for Kafka's ack, through any outage."""

    def __init__(self, emit: Emit, metrics: Metrics, routes: Routes) -> None:
        self.emit = emit
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, row: Row) -> None:
        request = correction_request(row)
        key, value = correction_key(row, self.routes), request_encoder.encode(request)
        self.metrics.corrections.labels(row.link).inc()
        await retry_forever(lambda: self.emit(key, value), f"correction request for {request.key}")


def fact_emitter(emit: Emit, metrics: Metrics) -> Callable[[Envelope], Awaitable[None]]:
    """Writes what a reconcile listing found to the events topic, through any outage."""
    async def emit_fact(envelope: Envelope) -> None:
        key, value = envelope.key.encode(), envelope_encoder.encode(envelope)
        metrics.listing_facts.labels(type(envelope.body).__name__.lower()).inc()
        await retry_forever(lambda: emit(key, value), f"reconcile fact {envelope.event_id}")
    return emit_fact


class Fold:
    """``emit_fact``: the events topic, for what comparing listing pages found
    (``streams.core.listing``); ``reconciled``: told the links a listing summary was folded
    for (the re-raise scan raises their drift again, as a listing restating it once did)."""

    def __init__(self, routes: Routes, tables: FoldTables, request: RequestCorrection, lookups: Lookups,
                 metrics: Metrics, dead: DeadLetters, emit_fact: Emit | None = None,
                 reconciled: Callable[[list[str]], None] | None = None,
                 listings_complete: Callable[[], None] | None = None, listings: Listings | None = None) -> None:
        self.routes = routes
        self.tables = tables
        self.request = request
        self.lookups = lookups
        self.metrics = metrics
        self.dead = dead
        self.emit_fact = emit_fact
        self.reconciled = reconciled or (lambda links: None)
        self.listings_complete = listings_complete or (lambda: None)
        self.listings = listings or Listings()
        self.positions: dict[int, int] = {}  # by-link partition -> the offset after the last one folded
        self._advanced = asyncio.Event()

        self._fact = fact_emitter(emit_fact, metrics) if emit_fact is not None else None

    async def caught_up(self, ends: dict[int, int], timeout: float) -> bool:
        """Wait until each partition of ``ends`` is folded up to its offset (False: not within ``timeout``)."""
        async def reached() -> None:
            while any(self.positions.get(partition, 0) < end for partition, end in ends.items() if end > 0):
                await self._advanced.wait()
        try:
            async with asyncio.timeout(timeout):
                await reached()
            return True
        except TimeoutError:
            return False

    async def fold_batch(self, groups: Sequence[LinkGroup]) -> None:
        """Fold each link's envelopes into its partition; requests and dead letters, then
        state, then lookups (the batch is committed after this returned)."""
        tables, state, routes = self.tables, self.tables.state, self.routes
        needs: list[LookupNeeded] = []
        requests: list[Awaitable[None]] = []
        folded = []  # (group, its changes), written below
        for group in groups:
            items = envelopes_of(group, self.dead, requests)
            with tables.partition(group):
                result: FoldResult = fold_by_link(state, routes, items, self.listings if self.emit_fact else None)
                rows = needing_correction(state, routes, result.dirty)
            folded.append((group, tables.take_changes()))  # each key once per batch
            self.metrics.events_folded.labels(group.link).inc(len(items) - result.compared)
            if result.compared:
                self.metrics.listing_pages.labels(group.link).inc(result.compared)
            needs.extend(result.lookups)
            requests.extend(self.request(row) for row in rows)
            if self._fact is not None:  # before the pages' offsets are committed
                requests.extend(self._fact(fact) for fact in result.facts)
            if result.reconciled:
                self.reconciled(result.reconciled)
        await asyncio.gather(*requests)
        for cut in self.listings.cut_short:
            log.info("%s (a restart or rebalance cut it): users it did not have are found by the next pass", cut)
        self.listings.cut_short.clear()
        writes = []
        for group, changes in folded:
            with tables.partition(group):
                writes.extend(tables.write(group, changes))
        await asyncio.gather(*writes)
        for group in groups:
            _topic, partition, offset = group.places[-1]
            self.positions[partition] = max(self.positions.get(partition, 0), offset + 1)
        self._advanced.set()
        self._advanced.clear()
        self.lookups.start(needs)
        if self.listings.complete:
            self.listings_complete()

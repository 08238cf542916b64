"""The reconcile stage: REST listings of every qualifying link, compared with the table.

It decides nothing itself. Each listing (an offering in some states, every page) goes to
the listings topic, kept a few intervals, and one :class:`ListingSummary` per listing to
the events topic, kept for ever. Each link's fold compares the pages with its table and
writes only what differs (``streams.core.listing``), so a mismatch no event announced
becomes a correction request through the same path as an event-driven one, and a pass
over a converged table adds one small record per listing to the permanent log instead
of every user (260 B each in a page: 98 % of the log at the capacity plan's shape).

While a worker of the group predates the listings topic (a rolling upgrade: it would
fold the pages into its table without writing what they changed), the stage writes the
pages to the events topic as it always did (:attr:`Reconcile.differences` says which);
old listings fold as they always did.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from streams.contract.config import Link
from streams.contract.schema import (
    Envelope, ListingSummary, OfferingUserRecord, Origin, SnapshotPage, envelope_encoder, event_key, listing_digest,
    normalize_uuid,
)
from streams.errors import UsyncError
from streams.metrics import Metrics
from streams.ports import Clock, Emit, OfferingUsers, SystemClock

log = logging.getLogger("usync.reconciler")

SOURCE_STATES = ["OK"]
FAILED_PASS_RETRY = 60.0  # seconds before a failed pass is tried again (at most the interval)

Listing = tuple[str, str, tuple[str, ...]]  # (site, offering, states)


def jittered(interval: float, rng: random.Random) -> float:
    """±10 %, so workers restarted together do not hammer the APIs in step."""
    return interval * rng.uniform(0.9, 1.1)


async def always() -> bool:
    return True


class Reconcile:
    """``emit``: the events topic; ``emit_listing``: the listings topic (None: pages go to
    the events topic, as before the listings topic existed); ``differences``: asked once
    per pass whether every worker of the group compares listings (else this pass writes
    pages to the events topic)."""

    def __init__(self, links: Sequence[Link], sites: Mapping[str, OfferingUsers], metrics: Metrics, emit: Emit,
                 interval: float, clock: Clock | None = None, rng: random.Random | None = None, *,
                 emit_listing: Emit | None = None, differences: Callable[[], Awaitable[bool]] = always) -> None:
        self.links = links
        self.sites = sites
        self.metrics = metrics
        self.emit = emit
        self.emit_listing = emit_listing
        self.differences = differences
        self.interval = interval
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.next_pass = 0.0  # monotonic; 0 = at start

    async def tick(self) -> None:
        """Run a pass when one is due (a timer calls this every second on the leader)."""
        if time.monotonic() < self.next_pass:
            return
        self.next_pass = time.monotonic() + jittered(self.interval, self.rng)
        try:
            await self.run_pass()
        except UsyncError as exc:  # a site or Kafka failed the pass: counted and logged; the next pass retries
            log.warning("reconcile pass failed: %s: %s", type(exc).__name__, exc)
            self.next_pass = time.monotonic() + min(FAILED_PASS_RETRY, self.interval)

    async def run_pass(self) -> dict[str, int]:
        """One pass over every link; returns users listed per qualifying link.

        An offering is listed once per pass and states, however many links share it: a
        page is routed (like any fact of its site and offering) to every link with that
        endpoint, so one identity site feeding 20 targets is listed once, not 20 times.
        A link's two sides are listed at once, each within its own site's budget.
        """
        emit_listing = self.emit_listing if self.emit_listing is not None and await self.differences() else None
        if self.emit_listing is not None and emit_listing is None:
            log.info("a worker of the group does not read the listings topic yet: this pass writes its listings "
                     "to the events topic, as before")
        done: dict[str, int] = {}
        listed: dict[Listing, asyncio.Future[int]] = {}
        try:
            for link in self.links:
                if not link.reconcile:
                    log.info("skipping link %s: reconcile = false", link.name)
                    continue
                b, a = await asyncio.gather(
                    self.once(listed, link, link.source.site, link.source.offering, SOURCE_STATES, emit_listing),
                    self.once(listed, link, link.target.site, link.target.offering, list(link.target_states),
                              emit_listing))
                done[link.name] = a + b
                log.info("reconciled link %s: %d B users, %d A users listed", link.name, b, a)
        except Exception:
            self.metrics.reconcile_passes.labels("failed").inc()
            for pending in listed.values():
                pending.cancel()
            raise
        self.metrics.reconcile_passes.labels("ok").inc()
        return done

    async def once(self, listed: dict[Listing, asyncio.Future[int]], link: Link, site: str, offering: str,
                   states: list[str], emit_listing: Emit | None) -> int:
        """List an offering unless this pass listed (or is listing) the same offering and states already."""
        key = (site, normalize_uuid(offering), tuple(states))
        if key not in listed:
            listed[key] = asyncio.ensure_future(self.snapshot(link, site, offering, states, emit_listing))
        else:
            log.debug("link %s: %s offering %s already listed in this pass", link.name, site, offering)
        return await asyncio.shield(listed[key])

    async def snapshot(self, link: Link, site: str, offering: str, states: list[str],
                       emit_listing: Emit | None = None) -> int:
        """List one offering through every page; write each page; return the users seen.
        With ``emit_listing``, pages go there and the events topic gets the listing's summary."""
        snapshot_id = uuid.uuid4().hex
        users: list[OfferingUserRecord] = []
        began = asked = self.clock.now()  # a page is as old as its request (see streams.core.fold)
        key = event_key(site, offering).encode()
        emit, origin = (emit_listing, Origin.LISTING) if emit_listing is not None else (self.emit, Origin.SNAPSHOT)
        pages = 0
        async for page, total, records, last in self.sites[site].list_offering_users(offering, states):
            envelope = Envelope(
                event_id=f"{snapshot_id}:{page}", site=site, origin=origin, offering_uuid=offering, received_at=asked,
                body=SnapshotPage(snapshot_id=snapshot_id, offering_uuid=offering, states=states, page=page,
                                  last=last, total=total, users=records),
            )
            await emit(key, envelope_encoder.encode(envelope))
            self.metrics.snapshot_pages.labels(link.name, site).inc()
            users.extend(records)
            pages += 1
            asked = self.clock.now()  # the generator asks for the next page when resumed
        if emit_listing is not None:
            await self.emit(key, envelope_encoder.encode(self._summary(snapshot_id, site, offering, states, pages,
                                                                       total, users, began)))
        return len(users)

    def _summary(self, snapshot_id: str, site: str, offering: str, states: list[str], pages: int, total: int,
                 users: list[OfferingUserRecord], began: datetime) -> Envelope:
        body = ListingSummary(snapshot_id=snapshot_id, offering_uuid=offering, states=states, pages=pages, total=total,
                              listed=len(users), digest=listing_digest(users), finished_at=self.clock.now())
        return Envelope(event_id=snapshot_id, site=site, origin=Origin.RECONCILE, offering_uuid=offering,
                        received_at=began, body=body)

"""The reconcile stage: REST snapshots of every qualifying link, written as SnapshotPage facts.

It decides nothing itself: the fold reads the pages like any other fact and marks every
listed (link, user) dirty, so a mismatch no event announced becomes a correction
request through the same path as an event-driven one.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence

from streams.contract.config import Link
from streams.contract.schema import Envelope, Origin, SnapshotPage, envelope_encoder, event_key, normalize_uuid
from streams.errors import UsyncError
from streams.metrics import Metrics
from streams.ports import Clock, Emit, OfferingUsers, SystemClock

log = logging.getLogger("usync.reconciler")

SOURCE_STATES = ["OK"]
FAILED_PASS_RETRY = 60.0  # seconds before a failed pass is tried again (at most the interval)


def jittered(interval: float, rng: random.Random) -> float:
    """±10 %, so workers restarted together do not hammer the APIs in step."""
    return interval * rng.uniform(0.9, 1.1)


class Reconcile:
    def __init__(self, links: Sequence[Link], sites: Mapping[str, OfferingUsers], metrics: Metrics, emit: Emit,
                 interval: float, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.links = links
        self.sites = sites
        self.metrics = metrics
        self.emit = emit
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
        snapshot page is routed (like any fact of its site and offering) to every link
        with that endpoint, so one identity site feeding 20 targets is listed once, not
        20 times, and its pages are folded once per link, not 20 times per link.
        """
        done: dict[str, int] = {}
        listed: dict[tuple[str, str, tuple[str, ...]], int] = {}
        try:
            for link in self.links:
                if not link.reconcile:
                    log.info("skipping link %s: reconcile = false", link.name)
                    continue
                b = await self.once(listed, link, link.source.site, link.source.offering, SOURCE_STATES)
                a = await self.once(listed, link, link.target.site, link.target.offering, list(link.target_states))
                done[link.name] = a + b
                log.info("reconciled link %s: %d B users, %d A users listed", link.name, b, a)
        except Exception:
            self.metrics.reconcile_passes.labels("failed").inc()
            raise
        self.metrics.reconcile_passes.labels("ok").inc()
        return done

    async def once(self, listed: dict[tuple[str, str, tuple[str, ...]], int], link: Link, site: str,
                   offering: str, states: list[str]) -> int:
        """``snapshot`` unless this pass listed the same offering and states already."""
        key = (site, normalize_uuid(offering), tuple(states))
        if key not in listed:
            listed[key] = await self.snapshot(link, site, offering, states)
        else:
            log.debug("link %s: %s offering %s already listed in this pass", link.name, site, offering)
        return listed[key]

    async def snapshot(self, link: Link, site: str, offering: str, states: list[str]) -> int:
        """List one offering through every page; write each page; return the users seen."""
        snapshot_id = uuid.uuid4().hex
        seen = 0
        asked = self.clock.now()  # a page is as old as its request (see streams.core.fold)
        async for page, total, users, last in self.sites[site].list_offering_users(offering, states):
            envelope = Envelope(
                event_id=f"{snapshot_id}:{page}", site=site, origin=Origin.SNAPSHOT, offering_uuid=offering,
                received_at=asked,
                body=SnapshotPage(snapshot_id=snapshot_id, offering_uuid=offering, states=states, page=page,
                                  last=last, total=total, users=users),
            )
            await self.emit(event_key(site, offering).encode(), envelope_encoder.encode(envelope))
            self.metrics.snapshot_pages.labels(link.name, site).inc()
            seen += len(users)
            asked = self.clock.now()  # the generator asks for the next page when resumed
        return seen

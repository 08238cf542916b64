"""Identity-index misses: ask the site for the offering user, write the answer as a fact.

In the background: a slow site must not stall folding. The parked event stays in the
pending table until the answer is folded, so a lookup lost with its worker is re-issued
by :meth:`Lookups.retry_pending` (a timer, after a restart too).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from streams.core import LookupNeeded, TableState
from streams.errors import GaveUp
from streams.metrics import Metrics
from streams.ports import Clock, Emit, OfferingUsers, SystemClock
from streams.stages.facts import lookup_envelope

log = logging.getLogger("usync.lookups")

PENDING_RETRY_INTERVAL = 10.0  # seconds between re-issues of parked events' lookups
# An answer written to the events topic is on its way to every parked event before it in
# that topic (one partition per site and offering): an event that misses the index while
# the answer travels (route, repartition, fold: ~0.3 s) needs no second GET. Without
# this, one identity site feeding three targets was read 1.21-1.27 times per change under
# load (tests/app/test_federation.py): the update and the username_set of one change, or
# the same change on another link, asked again in that window. Past it, or when no answer
# was written, a parked event asks again (and retry_pending does, every 10 s).
ANSWER_TRAVELS = 5.0
ANSWERED_MAX = 10_000


class Lookups:
    def __init__(self, sites: Mapping[str, OfferingUsers], emit_event: Emit, metrics: Metrics,
                 state: Callable[[], TableState], clock: Clock | None = None) -> None:
        self.sites = sites
        self.emit_event = emit_event
        self.metrics = metrics
        self.state = state
        self.clock = clock or SystemClock()
        self.in_flight: dict[tuple[str, str], asyncio.Task] = {}
        #: (site, offering user) -> when its answer was written (monotonic), newest last
        self.answered: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def start(self, needs: Iterable[LookupNeeded]) -> None:
        """One background lookup per (site, offering user), however many ask for it."""
        now = time.monotonic()
        while self.answered and next(iter(self.answered.values())) < now - ANSWER_TRAVELS:
            self.answered.popitem(last=False)
        for need in needs:
            key = (need.site, need.offering_user_uuid)
            if self.answered.get(key, -ANSWER_TRAVELS) >= now - ANSWER_TRAVELS:
                self.metrics.lookups.labels(need.site, "answer-travelling").inc()
            elif key not in self.in_flight:
                task = asyncio.ensure_future(self.lookup(need))
                self.in_flight[key] = task
                task.add_done_callback(lambda _, key=key: self.in_flight.pop(key, None))

    async def retry_pending(self) -> None:
        """Re-issue the lookups of parked events: after a restart, or after a lookup gave up."""
        self.start(LookupNeeded(site=parked.site, offering_uuid=parked.offering_uuid,
                                offering_user_uuid=parked.offering_user_uuid, link=parked.link,
                                cause_event_id=parked.event_id)
                   for parked in list(self.state().pending.values()))

    async def lookup(self, need: LookupNeeded) -> None:
        """Ask the site; write the answer as a fact (404 is an answer too)."""
        asked = self.clock.now()
        try:
            status, record = await self.sites[need.site].get_offering_user(need.offering_user_uuid)
        except GaveUp as exc:  # the pending entry stays; the next event, snapshot or retry asks again
            log.warning("lookup of %s on %s gave up: %s", need.offering_user_uuid, need.site, exc)
            self.metrics.lookups.labels(need.site, "gave-up").inc()
            return
        self.metrics.lookups.labels(need.site, str(status)).inc()
        await self.emit_event(*lookup_envelope(need.site, need.offering_uuid, need.offering_user_uuid,
                                               status, record, asked))
        key = (need.site, need.offering_user_uuid)
        self.answered[key] = time.monotonic()
        self.answered.move_to_end(key)
        if len(self.answered) > ANSWERED_MAX:
            self.answered.popitem(last=False)

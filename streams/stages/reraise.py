"""Rows left in drift are raised once more; refused rows once their retry window passed.

When a group forms, faust can commit correction requests it never handed to the sink;
without this, such users would wait for the next reconcile. A row is raised again once
its newest fact is ``settle`` seconds old, and once per newest fact. A row A refused
(``streams.core.decide.refused``) is not drift: it is raised again only when its retry
window (``RetryWindow``: 1 h doubling to 24 h by default) has passed since the refusal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

from streams.contract.config import Link
from streams.contract.schema import Envelope
from streams.core import RetryWindow, Row, TableState, compile_routes, correction_needed, refused, retry_due, row_key
from streams.core.listing import Listings
from streams.ports import Clock, SystemClock

log = logging.getLogger("usync.reraise")

RERAISE_INTERVAL = 30.0  # default seconds between scans for rows left in drift (config: reraise_interval)
RERAISE_SETTLE = 30.0  # default age a row's newest fact must have before it is raised again
# Rows read (decoded from the table) between two yields to the event loop. The scan ran in
# one go (``streams.core.drift_by_link``): 1M rows held the loop for seconds, and with it
# the fold, the sink and the consumers' heartbeats. A slice of 2,000 is ~5-10 ms
# (``bench/bench_rebalance.py`` prints the longest stall of a 1M-row scan).
SCAN_SLICE = 2_000
UNLISTED_GATHER = 1.0  # seconds a completed listing waits for others before the scan for absent users


class Reraiser:
    """Also where a complete listing's absent users are found (``listings``: the fold's;
    ``emit_fact`` writes the Unlisted facts): one pass over the table answers every
    listing completed since the last scan."""

    def __init__(self, links: Sequence[Link], state: Callable[[], TableState],
                 request: Callable[[Row], Awaitable[None]], clock: Clock | None = None,
                 window: RetryWindow | None = None, settle: float = RERAISE_SETTLE, *,
                 listings: Listings | None = None, emit_fact: Callable[[Envelope], Awaitable[None]] | None = None) -> None:
        self.links = links
        self.state = state
        self.request = request
        self.clock = clock or SystemClock()
        self.window = window or RetryWindow()
        self.settle = settle
        self.listings = listings
        self.emit_fact = emit_fact
        self.raised_again: dict[str, int] = {}  # row key -> the newest fact it was raised again for
        self._unlisted_task: asyncio.Future[None] | None = None

    def reconciled(self, links: list[str]) -> None:
        """A listing of these links completed: their rows in drift are raised again (once
        more per pass, as the pages restating every row did before the listings topic)."""
        prefixes = tuple(f"{link}:" for link in links)
        for key in [key for key in self.raised_again if key.startswith(prefixes)]:
            del self.raised_again[key]

    async def unlisted(self) -> int:
        """Write an Unlisted fact for each row a listing completed since the last scan did not have."""
        if self.listings is None or self.emit_fact is None:
            return 0
        complete = self.listings.take_complete()
        if not complete:
            return 0
        state = self.state()
        facts: list[Envelope] = []
        rows = state.rows
        links = {link for link, _side in complete}
        keys = _key_snapshot(rows)
        while chunk := list(itertools.islice(keys, SCAN_SLICE)):  # in slices, as the drift scan
            for key in chunk:
                row = rows.get(key) if key.partition(":")[0] in links else None  # decode only the listed links' rows
                if row is not None:
                    facts.extend(self.listings.unlisted(state, row, complete))
            await asyncio.sleep(0)
        for fact in facts:
            log.info("%s: %s is not in the listing %s", fact.body.link, fact.body.user_username,  # type: ignore[union-attr]
                     fact.body.snapshot_id)  # type: ignore[union-attr]
        await asyncio.gather(*(self.emit_fact(fact) for fact in facts))
        return len(facts)

    def listings_complete(self) -> None:
        """The fold saw a listing's last page: look for its absent users now, not at the next scan."""
        if self._unlisted_task is None or self._unlisted_task.done():
            self._unlisted_task = asyncio.ensure_future(self._unlisted_until_none())

    async def _unlisted_until_none(self) -> None:
        while self.listings is not None and self.listings.complete:
            await asyncio.sleep(UNLISTED_GATHER)  # the other listings of the pass complete meanwhile: one scan for them
            await self.unlisted()

    async def _candidates(self, now: int) -> list[tuple[Row, str]]:
        """The drifting rows and the refused ones due, by link, as ``drift_by_link`` finds
        them, in one pass over the table read in slices (the fold goes on in between)."""
        by_name = compile_routes(self.links).by_name
        drifting: dict[str, list[Row]] = {name: [] for name in by_name}
        refusing: dict[str, list[Row]] = {name: [] for name in by_name}
        rows = self.state().rows
        keys = _key_snapshot(rows)
        while chunk := list(itertools.islice(keys, SCAN_SLICE)):
            for key in chunk:
                row = rows.get(key)
                link = by_name.get(row.link) if row is not None else None
                if link is not None and correction_needed(row, link):  # type: ignore[arg-type]
                    (refusing if refused(row) else drifting)[link.name].append(row)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        found: list[tuple[Row, str]] = []
        for name in by_name:
            found += [(row, f"still in drift {self.settle:.0f} s after its newest fact") for row in drifting[name]]
            found += [(row, f"A refused {row.rejected_desired!r} {row.rejected_count} time(s); "
                            f"its retry window of {self.window.seconds(row.rejected_count):.0f} s passed")
                      for row in refusing[name] if retry_due(row, now, self.window)]
        return found

    async def scan(self) -> int:
        """Raise every settled drifting row not raised for its newest fact yet, and every
        refused row whose retry window passed; return how many. Then the listings' absent users."""
        raised = await self._raise()
        await self.unlisted()
        return raised

    async def _raise(self) -> int:
        now = self.clock.micros()
        settled_before = now - int(self.settle * 1_000_000)
        raised = 0
        for row, why in await self._candidates(now):
            newest = max(row.b_observed_at, row.a_observed_at, row.rejected_at)
            key = row_key(row.link, row.user_username)
            if newest > settled_before or self.raised_again.get(key) == newest:
                continue
            self.raised_again[key] = newest
            log.info("raising %s again: %s", key, why)
            await self.request(row)
            raised += 1
        return raised


def _key_snapshot(rows: Mapping[str, Row]) -> Iterator[str]:
    """The table's keys as they are now, to read while the fold writes: a faust table's
    mapping takes its own snapshot of the stored keys; a dict's keys are copied."""
    keys: Iterable[str] = list(rows) if isinstance(rows, dict) else rows
    return iter(keys)

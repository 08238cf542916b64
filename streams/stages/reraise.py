"""Rows left in drift are raised once more.

When a group forms, faust can commit correction requests it never handed to the sink;
without this, such users would wait for the next reconcile. A row is raised again once
its newest fact is ``RERAISE_SETTLE`` seconds old, and once per newest fact.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from streams.contract.config import Link
from streams.core import Row, TableState, drift, row_key
from streams.ports import Clock, SystemClock

log = logging.getLogger("usync.reraise")

RERAISE_INTERVAL = 30.0  # seconds between scans for rows left in drift
RERAISE_SETTLE = 30.0  # a row's newest fact must be this old before it is raised again


class Reraiser:
    def __init__(self, links: Sequence[Link], state: Callable[[], TableState],
                 request: Callable[[Row], Awaitable[None]], clock: Clock | None = None) -> None:
        self.links = links
        self.state = state
        self.request = request
        self.clock = clock or SystemClock()
        self.raised_again: dict[str, int] = {}  # row key -> the newest fact it was raised again for

    async def scan(self) -> int:
        """Raise every settled drifting row not raised for its newest fact yet; return how many."""
        settled_before = self.clock.micros() - int(RERAISE_SETTLE * 1_000_000)
        state = self.state()
        raised = 0
        for link in self.links:
            for row in drift(state, link):
                newest = max(row.b_observed_at, row.a_observed_at)
                key = row_key(row.link, row.user_username)
                if newest > settled_before or self.raised_again.get(key) == newest:
                    continue
                self.raised_again[key] = newest
                log.info("raising %s again: still in drift %.0f s after its newest fact", key, RERAISE_SETTLE)
                await self.request(row)
                raised += 1
        return raised

"""Rows left in drift are raised once more; refused rows once their retry window passed.

When a group forms, faust can commit correction requests it never handed to the sink;
without this, such users would wait for the next reconcile. A row is raised again once
its newest fact is ``settle`` seconds old, and once per newest fact. A row A refused
(``streams.core.decide.refused``) is not drift: it is raised again only when its retry
window (``RetryWindow``: 1 h doubling to 24 h by default) has passed since the refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

from streams.contract.config import Link
from streams.core import RetryWindow, Row, TableState, drift_by_link, retry_due, row_key
from streams.ports import Clock, SystemClock

log = logging.getLogger("usync.reraise")

RERAISE_INTERVAL = 30.0  # default seconds between scans for rows left in drift (config: reraise_interval)
RERAISE_SETTLE = 30.0  # default age a row's newest fact must have before it is raised again


class Reraiser:
    def __init__(self, links: Sequence[Link], state: Callable[[], TableState],
                 request: Callable[[Row], Awaitable[None]], clock: Clock | None = None,
                 window: RetryWindow | None = None, settle: float = RERAISE_SETTLE) -> None:
        self.links = links
        self.state = state
        self.request = request
        self.clock = clock or SystemClock()
        self.window = window or RetryWindow()
        self.settle = settle
        self.raised_again: dict[str, int] = {}  # row key -> the newest fact it was raised again for

    def _candidates(self, now: int) -> Iterator[tuple[Row, str]]:
        for found in drift_by_link(self.state(), self.links).values():  # one pass over the table
            for row in found.drift:
                yield row, f"still in drift {self.settle:.0f} s after its newest fact"
            for row in found.rejected:
                if retry_due(row, now, self.window):
                    yield row, (f"A refused {row.rejected_desired!r} {row.rejected_count} time(s); "
                                f"its retry window of {self.window.seconds(row.rejected_count):.0f} s passed")

    async def scan(self) -> int:
        """Raise every settled drifting row not raised for its newest fact yet, and every
        refused row whose retry window passed; return how many."""
        now = self.clock.micros()
        settled_before = now - int(self.settle * 1_000_000)
        raised = 0
        for row, why in list(self._candidates(now)):
            newest = max(row.b_observed_at, row.a_observed_at, row.rejected_at)
            key = row_key(row.link, row.user_username)
            if newest > settled_before or self.raised_again.get(key) == newest:
                continue
            self.raised_again[key] = newest
            log.info("raising %s again: %s", key, why)
            await self.request(row)
            raised += 1
        return raised

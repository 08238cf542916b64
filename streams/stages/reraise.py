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
from streams.core import RetryWindow, Row, TableState, compile_routes, correction_needed, refused, retry_due, row_key
from streams.ports import Clock, SystemClock

log = logging.getLogger("usync.reraise")

RERAISE_INTERVAL = 30.0  # default seconds between scans for rows left in drift (config: reraise_interval)
RERAISE_SETTLE = 30.0  # default age a row's newest fact must have before it is raised again
# Rows read (decoded from the table) between two yields to the event loop. The scan ran in
# one go (``streams.core.drift_by_link``): 1M rows held the loop for seconds, and with it
# the fold, the sink and the consumers' heartbeats. A slice of 2,000 is ~5-10 ms
# (``bench/bench_rebalance.py`` prints the longest stall of a 1M-row scan).
SCAN_SLICE = 2_000


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
        refused row whose retry window passed; return how many."""
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

"""A site's API budget in one process: a token bucket that can own a share of it.

No I/O of its own, so the bridge (its registration calls) and the workers (every other
call) pace their calls to a site with the same bucket. In a worker the share and its
lease come from the demand exchange (``streams.adapters.kafka.budget``), which learns
from :meth:`TokenBucket.want` whether this process has work for the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator

from streams.contract.config import BRIDGES_PER_SITE, REGISTRATION_SHARE, Rates


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; ``acquire`` waits for one.

    :meth:`set_share` scales both to this process's part of the site's budget (a worker's
    part by the demand exchange, ``streams.core.shares``). With no share, every
    ``acquire`` waits until one is given, so the workers together never exceed the
    configured rate. A share's burst is at least one token, or a small share of a small
    burst could never send: the workers together may then bank ``burst + workers``.

    A share holds until :attr:`lease_until` (monotonic; for ever unless :meth:`renew` is
    used): past it ``acquire`` waits for a renewal, so a worker whose view of the others
    went stale (its event loop stalled, Kafka away) stops spending a part that others may
    have taken meanwhile. :meth:`want` counts the work this process has for the site;
    ``on_want`` hears each change between none and some (the exchange publishes it).
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.full_rate = rate
        self.full_burst = float(burst)
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self.lease_until = math.inf
        self.wanted = 0
        self.on_want: Callable[[], None] | None = None

    def want(self, delta: int) -> None:
        """``delta`` more (or fewer) pieces of work for the site in this process."""
        before = self.wanted > 0
        self.wanted += delta
        if (self.wanted > 0) != before and self.on_want is not None:
            self.on_want()

    @contextlib.contextmanager
    def wanting(self) -> Iterator[None]:
        """Counted as work for the site while the block runs (a call and its retries)."""
        self.want(1)
        try:
            yield
        finally:
            self.want(-1)

    def renew(self, until: float) -> None:
        """The share holds until monotonic ``until``."""
        self.lease_until = until
        if self.rate > 0 and until > time.monotonic():
            self._open.set()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def set_share(self, share: float) -> None:
        """Own ``share`` (0..1) of the full rate and burst from now on."""
        self._refill()
        self.rate = self.full_rate * share
        self.burst = max(1.0, self.full_burst * share) if share > 0 else 0.0
        self.tokens = min(self.tokens, self.burst)
        if share > 0 and time.monotonic() < self.lease_until:
            self._open.set()
        else:
            self._open.clear()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter refills at a time
            while True:
                await self._open.wait()
                if time.monotonic() >= self.lease_until:
                    self._open.clear()  # stale: wait for the next renewal
                    continue
                self._refill()
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                # a share given or taken meanwhile is read on the next turn
                await asyncio.sleep(min(1.0, (1.0 - self.tokens) / self.rate) if self.rate > 0 else 0.1)


def registration_bucket(rates: Rates) -> TokenBucket:
    """What one bridge process may spend on a site's registration calls: its part of the
    ``REGISTRATION_SHARE`` the workers leave, with at least one token banked."""
    part = REGISTRATION_SHARE / BRIDGES_PER_SITE
    return TokenBucket(rates.requests_per_second * part, max(1, int(rates.burst * part)))

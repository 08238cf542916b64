"""A site's API budget in one process: a token bucket that can own a share of it.

No I/O of its own, so the bridge (its registration calls) and the workers (every other
call) pace their calls to a site with the same bucket.
"""

from __future__ import annotations

import asyncio
import time

from streams.contract.config import BRIDGES_PER_SITE, REGISTRATION_SHARE, Rates


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; ``acquire`` waits for one.

    :meth:`set_share` scales both to this process's part of the site's budget (a worker
    owns the part of the correct stage's partitions it is assigned; see
    :meth:`Clients.set_share`). With no share, every ``acquire`` waits until one is given:
    a worker that owns nothing sends nothing, so the workers together never exceed the
    configured rate. A share's burst is at least one token, or a small share of a small
    burst could never send: the workers together may then bank ``burst + workers``.
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
        if share > 0:
            self._open.set()
        else:
            self._open.clear()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter refills at a time
            while True:
                await self._open.wait()
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

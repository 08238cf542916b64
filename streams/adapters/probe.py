"""A site that is down is probed at a short fixed interval while its work waits.

The retries of each call back off exponentially (``streams.retry.Backoff``: 0.5 s
doubling to 30 s), so after an outage of 30 s the calls waiting on the site were 8.9-10 s
from their next attempt when it answered again, and the link converged 22-27 s after it
was back (issue 29). Here the waits of a down site's retries are shared: every
:data:`PROBE_SECONDS` the call that has waited longest goes at once (the probe: a real
call of the work, through the site's budget like any other, so it costs nothing extra),
and the first answer of the site wakes every waiting call. A site back is noticed within
about ``PROBE_SECONDS`` (the interval, plus the probe's own round trip). A probe never
goes before a ``Retry-After`` the site asked for, and is not one of the carrying call's
attempts (``max_attempts``), whose own next attempt stays where its backoff put it (so a
call still gives up after its attempts, ~30-60 s into an outage, as before): with two calls waiting through a 40 s outage, the probes had
used up their attempts in ~20 s, they gave up, and nothing was left to probe with (the
first call after the site returned came from the re-raise timer, 5 s to over 60 s later).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

#: Seconds between two probes of a down site (one call each).
PROBE_SECONDS = 2.0


class SiteBack:
    """The retry waits of one site's calls. :meth:`wait` is a retry's backoff: the whole
    delay while the site is up; while it is down, until this call is the next probe or
    the site answers again (:meth:`answered`), at most the delay."""

    def __init__(self, interval: float = PROBE_SECONDS) -> None:
        self.interval = interval
        self.down = False
        self.not_before = 0.0  # monotonic: a Retry-After of the site's
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self._prober: asyncio.Task | None = None

    def failing(self) -> None:
        """The site is down (``SiteHealth``): probe it while calls wait."""
        self.down = True
        self._start()

    def answered(self) -> None:
        """The site answers again: every waiting call goes now."""
        self.down = False
        while self.waiters:
            _release(self.waiters.popleft(), BACK)
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None

    def asked_to_wait(self, seconds: float) -> None:
        self.not_before = max(self.not_before, time.monotonic() + seconds)

    async def wait(self, delay: float) -> bool:
        """True when this call goes as the probe (its attempt is the site's, not its own)."""
        released = asyncio.get_running_loop().create_future()
        self.waiters.append(released)
        if self.down:
            self._start()
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(released, delay) is PROBE
            return False
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(released)

    def _start(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.ensure_future(self._probe())

    async def _probe(self) -> None:
        """One waiting call every ``interval`` while the site is down and calls wait."""
        while self.down and self.waiters:
            await asyncio.sleep(max(self.interval, self.not_before - time.monotonic()))
            while self.down and self.waiters:
                oldest = self.waiters.popleft()
                if not oldest.done():
                    _release(oldest, PROBE)
                    break


PROBE, BACK = "probe", "back"


def _release(future: asyncio.Future, why: str) -> None:
    if not future.done():
        future.set_result(why)

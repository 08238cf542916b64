"""The one retry policy of every usync loop that talks to a broker or an API:
exponential backoff from 1 s doubling to a 120 s cap, with jitter, never giving up.

Pure (no sleeping here): callers sleep for the delay they are given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_SECONDS = 1.0
CAP_SECONDS = 120.0


def backoff_delay(
    attempt: int,
    rng: random.Random,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    "Equal jitter": half the exponential step is kept so a retry never comes
    immediately, the other half is random so that many clients that lost the same
    peer at once do not return to it in lockstep. A server's ``Retry-After`` is a
    floor: asked to wait, we wait at least that long.
    """
    step = min(cap, base * (2 ** min(attempt, 32)))
    delay = step / 2 + rng.uniform(0, step / 2)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


@dataclass
class Backoff:
    """Backoff state for one loop: ``next_delay()`` after a failure, ``reset()`` after a success."""

    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = backoff_delay(self.attempt, self.rng, self.base, self.cap, retry_after)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

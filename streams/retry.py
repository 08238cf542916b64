"""The one retry policy and the one retry loop of usync.

Policy (:class:`Backoff`, pure): exponential backoff from 1 s doubling to a 120 s cap,
with jitter. Loop (:func:`retry_forever`): every loop that talks to a broker or an API
goes through it. Only classified transient failures are retried, and those forever; a
bug or a permanent failure goes up at once (``transient`` decides which is which).

A single Waldur API call is the one bounded retry (``streams.adapters.waldur``,
``max_attempts``): its caller records a gave-up outcome, and the row is raised again by
the re-raise timer or the next reconcile pass, so the work itself is never given up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from streams.errors import TransientError

log = logging.getLogger("usync.retry")

BASE_SECONDS = 1.0
CAP_SECONDS = 120.0

T = TypeVar("T")


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


#: Library failures that mean "the peer is away or slow" wherever they come from.
TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (TransientError, TimeoutError, ConnectionError)


def is_transient(exc: BaseException) -> bool:
    """The default classification: usync's transient errors, timeouts, lost connections."""
    return isinstance(exc, TRANSIENT_BUILTINS)


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    transient: Callable[[BaseException], bool] = is_transient,
    backoff: Backoff | None = None,
    backoff_for: Callable[[BaseException], Backoff] | None = None,
    on_retry: Callable[[BaseException, float], Awaitable[None] | None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    logger: logging.Logger = log,
) -> T:
    """``await attempt()`` until it returns; a transient failure is logged and retried
    after the backoff's next delay, for ever; anything else propagates at once.

    ``backoff`` may be shared with ``attempt`` (which resets it after progress, e.g. a
    consumer loop after each batch); ``backoff_for(exc)`` picks one per failure instead
    (slower for refused credentials); ``on_retry(exc, delay)`` runs after each failure
    (health, metrics; it may be a coroutine function); ``sleep`` waits the delay (a
    relay's wakes early when it is stopped).
    """
    backoff = backoff if backoff is not None else Backoff()
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            chosen = backoff_for(exc) if backoff_for is not None else backoff
            delay = chosen.next_delay(getattr(exc, "retry_after", None))
            logger.warning("%s failed (%s: %s); again in %.1f s", what, type(exc).__name__, exc, delay)
            if on_retry is not None:
                done = on_retry(exc, delay)
                if done is not None:
                    await done
            await sleep(delay)

"""Fault injection: what a site does wrong, switchable at run time, reproducible by seed.

API faults and event faults draw from separate seeded generators, so turning one on
does not change which calls or events the other hits.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import msgspec

ApiFault = Literal["error", "throttle", "timeout"]
EventFault = Literal["drop", "duplicate", "delay"]


class Faults(msgspec.Struct, kw_only=True):
    """Rates are fractions in [0, 1]. Event rates apply per message (per queue delivery)."""

    # events
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 2.0
    # API calls (paths under /api/ only; the /_sim admin endpoints are never faulted)
    error_rate: float = 0.0
    error_statuses: list[int] = msgspec.field(default_factory=lambda: [500, 502, 503])
    throttle_rate: float = 0.0
    retry_after: int = 1
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    latency: float = 0.0  # seconds added to every API call
    latency_jitter: float = 0.0  # plus uniform(0, jitter)
    methods: list[str] = msgspec.field(default_factory=list)  # empty: all methods
    # usernames a PATCH/PUT of an offering user is refused with 400, as Waldur refuses a
    # reserved one: {"username": ["This username is reserved and cannot be used."]}
    reserved_usernames: list[str] = msgspec.field(default_factory=list)
    seed: int = 0

    def validate(self) -> "Faults":
        for name in ("drop", "duplicate", "delay", "error_rate", "throttle_rate", "timeout_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.error_rate + self.throttle_rate + self.timeout_rate > 1.0:
            raise ValueError("error_rate + throttle_rate + timeout_rate must not exceed 1")
        if self.drop + self.duplicate + self.delay > 1.0:
            raise ValueError("drop + duplicate + delay must not exceed 1")
        for status in self.error_statuses:
            if not 400 <= status <= 599:
                raise ValueError(f"error_statuses: {status} is not an HTTP error status")
        if not self.error_statuses:
            raise ValueError("error_statuses must not be empty")
        return self


class FaultInjector:
    """Holds the current Faults and the seeded generators that decide each draw."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.stats: dict[str, int] = {}
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> Faults:
        self._faults = faults.validate()
        self._api_rng = random.Random(f"{faults.seed}:api")
        self._event_rng = random.Random(f"{faults.seed}:events")
        return self._faults

    def update(self, **changes: Any) -> Faults:
        """Change some settings; a changed `seed` restarts both generators."""
        merged = msgspec.to_builtins(self._faults)
        merged.update(changes)
        new = msgspec.convert(merged, Faults)
        if "seed" in changes:
            return self.set(new)
        self._faults = new.validate()
        return self._faults

    def reset(self) -> Faults:
        """All faults off; the seed is kept (and its generators restarted)."""
        self.stats.clear()
        return self.set(Faults(seed=self._faults.seed))

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # -- API ----------------------------------------------------------------------

    def api_latency(self) -> float:
        f = self._faults
        if f.latency <= 0 and f.latency_jitter <= 0:
            return 0.0
        return f.latency + (self._api_rng.uniform(0, f.latency_jitter) if f.latency_jitter > 0 else 0.0)

    def api_fault(self, method: str) -> tuple[ApiFault, int] | None:
        """None, or the fault to apply and its HTTP status (504 for a timeout)."""
        f = self._faults
        total = f.error_rate + f.throttle_rate + f.timeout_rate
        if total <= 0 or (f.methods and method.upper() not in f.methods):
            return None
        u = self._api_rng.random()
        if u < f.error_rate:
            self._count("error")
            return "error", self._api_rng.choice(f.error_statuses)
        if u < f.error_rate + f.throttle_rate:
            self._count("throttle")
            return "throttle", 429
        if u < total:
            self._count("timeout")
            return "timeout", 504
        return None

    # -- events -------------------------------------------------------------------

    def event_fault(self) -> EventFault | None:
        f = self._faults
        total = f.drop + f.duplicate + f.delay
        if total <= 0:
            return None
        u = self._event_rng.random()
        if u < f.drop:
            self._count("drop")
            return "drop"
        if u < f.drop + f.duplicate:
            self._count("duplicate")
            return "duplicate"
        if u < total:
            self._count("delay")
            return "delay"
        return None

"""The API call log and per-endpoint counters that tests and benchmarks read."""

from __future__ import annotations

import itertools
from collections import Counter, deque

import msgspec


class Call(msgspec.Struct, kw_only=True):
    seq: int
    time: float  # unix time the request arrived
    duration: float  # seconds until the answer
    method: str
    path: str
    query: str
    endpoint: str  # "METHOD /route/{pattern}/", the counter key
    status: int
    user: str | None  # username of the token's user, None if unauthenticated
    fault: str | None = None  # "error", "throttle", "timeout" when injected


class CallLog:
    """Counters are never truncated; the log keeps the newest `maxlen` calls."""

    def __init__(self, maxlen: int = 200_000) -> None:
        self._seq = itertools.count(1)
        self.log: deque[Call] = deque(maxlen=maxlen)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    def record(self, **fields: object) -> Call:
        call = Call(seq=next(self._seq), **fields)  # type: ignore[arg-type]
        self.log.append(call)
        self.counts[call.endpoint] += 1
        self.statuses[call.status] += 1
        return call

    def since(self, seq: int = 0) -> list[Call]:
        return [c for c in self.log if c.seq > seq]

    def count(self, endpoint: str | None = None, *, method: str | None = None, path_prefix: str | None = None) -> int:
        """Calls matching an exact endpoint key, or a method and/or path prefix."""
        if endpoint is not None:
            return self.counts[endpoint]
        return sum(
            1 for c in self.log
            if (method is None or c.method == method) and (path_prefix is None or c.path.startswith(path_prefix))
        )

    def reset(self) -> None:
        self.log.clear()
        self.counts.clear()
        self.statuses.clear()

"""How an HTTP answer of a Waldur API is treated: the classes every call is sorted into."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Final

__all__ = ["HttpClass", "classify_http", "parse_retry_after"]


class HttpClass(str, enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"  # transient: back off and try again, forever
    REJECT = "reject"  # the request itself is wrong: record it, do not retry
    PAUSE_SITE = "pause-site"  # our credentials are wrong: stop calling the site, alert


_RETRY_STATUSES: Final = frozenset({408, 425, 429})
_PAUSE_STATUSES: Final = frozenset({401, 403})


def classify_http(status: int | None) -> HttpClass:
    """How the sink treats an answer; ``None`` is a timeout or a broken connection."""
    if status is None or status in _RETRY_STATUSES or status >= 500:
        return HttpClass.RETRY
    if 200 <= status < 300:
        return HttpClass.SUCCESS
    if status in _PAUSE_STATUSES:
        return HttpClass.PAUSE_SITE
    return HttpClass.REJECT  # 400, 404, 409 and any other answer we cannot fix by waiting


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:  # RFC 9110: senders must use IMF-fixdate (email.utils would pull in socket)
        when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())

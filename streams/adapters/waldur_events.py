"""Waldur's event log over HTTP: the username changes of a site's offerings (``GET /api/events/``).

:class:`streams.ops.audit.WaldurLog` on a :class:`streams.adapters.waldur.SiteClient`, so the
calls share the site's token bucket, concurrency bound, retries and pause on 401/403. Per
offering: ``event_type=marketplace_offering_user_updated``, ``scope=<the offering's URL>``
(a caller that is not staff sees only the events of objects it names and may see),
``created_from`` / ``created_to`` (Unix times, ``>=`` and ``<``), ``o=created`` (oldest first:
records logged while the audit runs land after ``created_to`` and do not shift the pages),
pages of 100 (Waldur's maximum) followed by their ``Link: rel=next``. The offerings are read
one after another: the bucket, not concurrency, sets the pace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from streams.adapters.waldur import SiteClient, _next_link
from streams.contract.schema import normalize_uuid
from streams.errors import GaveUp
from streams.core.audit import LoggedChange

USERNAME_UPDATED: Final = "marketplace_offering_user_updated"
PAGE_SIZE: Final = 100
#: The URL Waldur names an offering by (its provider view), the ``scope`` of its events.
OFFERING_SCOPE: Final = "marketplace-provider-offerings/{uuid}/"


class _Context(msgspec.Struct):
    offering_user_uuid: str = ""
    old_username: str | None = ""
    new_username: str | None = ""
    user_username: str = ""  # the actor


class _Event(msgspec.Struct):
    uuid: str
    created: datetime
    event_type: str = ""
    context: _Context = msgspec.field(default_factory=_Context)


_events = msgspec.json.Decoder(list[_Event])


class WaldurEventLog:
    """The event log of one site, read through its client (and its budget)."""

    def __init__(self, client: SiteClient, api_url: str, progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.api_root = api_url if api_url.endswith("/") else api_url + "/"
        self.progress = progress or (lambda _line: None)
        self.calls = 0

    def scope(self, offering: str) -> str:
        return self.api_root + OFFERING_SCOPE.format(uuid=offering)

    async def username_changes(self, offerings: Sequence[str], start: datetime, end: datetime) -> list[LoggedChange]:
        found: list[LoggedChange] = []
        for offering in offerings:
            before = len(found)
            await self._offering(offering, start, end, found)
            self.progress(f"waldur: {len(found) - before} username changes of offering {offering} "
                          f"on {self.client.name} ({self.calls} calls so far)")
        return found

    async def _offering(self, offering: str, start: datetime, end: datetime, found: list[LoggedChange]) -> None:
        params: Any = [("event_type", USERNAME_UPDATED), ("scope", self.scope(offering)),
                       ("created_from", f"{start.timestamp():.6f}"), ("created_to", f"{end.timestamp():.6f}"),
                       ("o", "created"), ("page_size", str(PAGE_SIZE))]
        path = "events/"
        while True:
            answer = await self.client.request("GET", path, params=params)
            self.calls += 1
            if not answer.ok:
                raise GaveUp(self.client.name, answer.status, answer.attempts,
                             f"the event log answered HTTP {answer.status}")
            for event in _events.decode(answer.body):
                c = event.context
                if event.event_type == USERNAME_UPDATED and c.offering_user_uuid:
                    found.append(LoggedChange(event_uuid=event.uuid, created=event.created,
                                              offering_user_uuid=normalize_uuid(c.offering_user_uuid),
                                              old=c.old_username or "", new=c.new_username or "", actor=c.user_username))
            next_url = _next_link(answer.headers.get("Link", ""))
            if next_url is None:
                return
            path, params = next_url, None

"""Waldur's own audit log of offering users (``GET /api/events/``), as waldur-mastermind writes it.

What is logged, from ``waldur_mastermind/marketplace/handlers.py`` and
``waldur_core/logging/`` (facts: /work/shared/waldur-reference.md):

- a username change (a save whose username differs from the previous one) writes
  ``marketplace_offering_user_updated`` with ``offering_user_uuid``, ``old_username``,
  ``new_username`` (``None`` logged as ``""``), ``changed_fields = ["username"]``, the
  offering's ``offering_*`` fields (and, nested, its customer's ``customer_*``) and the
  affected user's ``affected_user_*``;
- a creation and a deletion write ``marketplace_offering_user_created`` / ``_deleted`` with
  the offering user's own log fields (``offering_user_username``, ``offering_user_is_restricted``,
  …, its offering's ``offering_*`` and its user's ``user_*``); a restriction change writes
  ``marketplace_offering_user_restriction_updated``;
- a request's middleware adds the actor (``user_uuid``, ``user_username``,
  ``user_full_name``) and ``ip_address``; saves made outside a request carry no actor;
- every event is in the feed of the offering and of its customer (its *scopes*).

Silent paths: a save with side effects skipped (bulk import, cleanup: the store's
``side_effects_skipped()``) writes neither this log nor a broker message, and a username
set behind the ORM (``drift_username``) writes nothing either. ``logged_types`` is what the
site's Waldur version logs: :data:`OLDER_WALDUR` logs only creations and deletions.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import Any, Final

import msgspec

from .models import new_uuid, now

USERNAME_UPDATED: Final = "marketplace_offering_user_updated"
CREATED: Final = "marketplace_offering_user_created"
DELETED: Final = "marketplace_offering_user_deleted"
RESTRICTION_UPDATED: Final = "marketplace_offering_user_restriction_updated"
EVERY_TYPE: Final = frozenset({USERNAME_UPDATED, CREATED, DELETED, RESTRICTION_UPDATED})
#: A Waldur from before the username handler: only creations and deletions are logged.
OLDER_WALDUR: Final = frozenset({CREATED, DELETED})
#: ``feature=`` event groups (waldur_core.logging.enums); only the offering-user types are modelled.
GROUPS: Final = {"users": frozenset({CREATED, DELETED, RESTRICTION_UPDATED})}


class LoggedEvent(msgspec.Struct, kw_only=True, gc=False):
    uuid: str
    created: datetime
    event_type: str
    message: str
    context: dict[str, Any]
    scopes: tuple[str, ...]  # uuids of the objects whose feed holds it: the offering, its customer


class EventLog:
    """Every event of one site, oldest first, with a per-scope index (a feed)."""

    def __init__(self) -> None:
        self.events: list[LoggedEvent] = []
        self.times: list[float] = []  # created, as timestamps (for created_from / created_to)
        self.by_scope: dict[str, list[int]] = {}  # scope uuid -> positions in events
        self.by_uuid: dict[str, int] = {}
        #: The event types this Waldur writes (a site's version); others are not logged.
        self.logged_types: frozenset[str] = EVERY_TYPE
        self.not_logged = 0  # events this version did not write

    def emit(self, event_type: str, message: str, context: dict[str, Any], scopes: tuple[str, ...],
             actor: dict[str, Any] | None = None, created: datetime | None = None) -> LoggedEvent | None:
        """Log one event now (``created``: at that time, to load a history; never before the last)."""
        if event_type not in self.logged_types:
            self.not_logged += 1
            return None
        # the request's context (the middleware's actor), then the event's own fields
        event = LoggedEvent(uuid=new_uuid(), created=created or now(), event_type=event_type, message=message,
                            context={**(actor or {}), **context}, scopes=scopes)
        at = len(self.events)
        if self.times and event.created.timestamp() < self.times[-1]:
            event.created = self.events[-1].created  # a clock step back: keep the log in time order
        self.events.append(event)
        self.times.append(event.created.timestamp())
        self.by_uuid[event.uuid] = at
        for scope in scopes:
            self.by_scope.setdefault(scope, []).append(at)
        return event

    def positions(self, scope: str | None, created_from: float | None, created_to: float | None) -> list[int]:
        """Positions of the events in ``scope``'s feed (every event without one) created in
        ``[created_from, created_to)``, oldest first."""
        if scope is None:
            lo = 0 if created_from is None else bisect.bisect_left(self.times, created_from)
            hi = len(self.times) if created_to is None else bisect.bisect_left(self.times, created_to)
            return list(range(lo, hi))
        feed = self.by_scope.get(scope, [])
        lo = 0 if created_from is None else bisect.bisect_left(feed, created_from, key=self.times.__getitem__)
        hi = len(feed) if created_to is None else bisect.bisect_left(feed, created_to, key=self.times.__getitem__)
        return feed[lo:hi]


def username_updated(log: EventLog, ou_uuid: str, old: str | None, new: str | None, offering: dict[str, Any],
                     affected_user: dict[str, Any], scopes: tuple[str, ...], actor: dict[str, Any] | None,
                     created: datetime | None = None) -> None:
    context = {"offering_user_uuid": ou_uuid, "old_username": old or "", "new_username": new or "",
               "changed_fields": ["username"], **offering, **affected_user}
    log.emit(USERNAME_UPDATED, f"Offering user username changed for {ou_uuid}: '{old or ''}' -> '{new or ''}'.",
             context, scopes, actor, created)

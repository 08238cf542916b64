"""``GET /api/events/``: Waldur's event log as waldur-mastermind serves it (waldur_core/logging).

Filters as ``EventFilter`` and ``EventFilterBackend`` apply them: ``event_type`` and
``feature`` (repeatable), ``scope`` (an object's URL: the events in its feed, empty when
the caller may not see the object, 400 when it names none), ``created_from`` (>=) and
``created_to`` (<) as Unix timestamps, ``customer_uuid`` / ``project_uuid`` / ``user_uuid``
(the context holds that value; ``user_uuid`` is the *actor*), ``message`` (contains,
case-insensitive), ``o=created`` / ``o=-created`` (default newest first), ``field`` (DRF's
field selection). A caller that is neither staff nor gives a scope sees nothing. Pages of
at most 100 with the ``Link`` header and ``X-Result-Count``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import rest
from .eventlog import GROUPS, LoggedEvent
from .models import User, iso, norm_uuid
from .store import NotFound, ValidationError

if TYPE_CHECKING:
    from .rest import Api

RENDERED = ("uuid", "created", "event_type", "message", "context")


def actor(request: web.Request, viewer: User) -> dict[str, Any]:
    """What Waldur's request middleware adds to every event logged during a request."""
    return {"user_uuid": viewer.uuid, "user_username": viewer.username, "user_full_name": viewer.full_name,
            "ip_address": request.remote or ""}


def _timestamp(field: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValidationError({field: ["Enter a number."]}) from None


class EventsApi:
    def __init__(self, api: "Api") -> None:
        self.api = api
        self.store = api.store
        self._cache: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()

    def render(self, event: LoggedEvent, fields: list[str]) -> dict[str, Any]:
        data = {"uuid": event.uuid, "created": iso(event.created), "event_type": event.event_type,
                "message": event.message, "context": event.context}
        return {k: v for k, v in data.items() if k in fields} if fields else data

    def _scope(self, viewer: User, url: str) -> str | None:
        """The scope's uuid, or None when the viewer may not see it (Waldur: no events)."""
        candidate = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        hexed = norm_uuid(candidate)
        s = self.store
        if hexed in s.offerings:
            return hexed if s.manages_offering(viewer, s.offerings[hexed]) else None
        if hexed in s.customers:
            return hexed if viewer.is_staff or viewer.uuid in s.customers[hexed].owners else None
        if hexed in s.projects:
            customer = s.customers.get(s.projects[hexed].customer)
            return hexed if viewer.is_staff or (customer is not None and viewer.uuid in customer.owners) else None
        if hexed in s.offering_users:
            return hexed if s.can_see(viewer, s.offering_users[hexed]) else None
        raise ValidationError({"scope": ["Invalid hyperlink - Object does not exist."]})

    def _filters(self, request: web.Request, viewer: User) -> tuple[Any, ...] | None:
        """The request's filters as a hashable key; None when Waldur answers with no events."""
        q = request.query
        scope = self._scope(viewer, q["scope"]) if "scope" in q else None
        if ("scope" in q and scope is None) or ("scope" not in q and not viewer.is_staff):
            return None
        types = frozenset(q.getall("event_type", [])) or None
        features = q.getall("feature", [])
        if features:  # both filters apply: the types named that are in the groups named
            grouped = frozenset().union(*(GROUPS.get(f, frozenset()) for f in features))
            types = types & grouped if types is not None else grouped
            if not types:
                return None
        exact = tuple((name, rest._uuid_or_400(name, q[name])) for name in ("customer_uuid", "project_uuid", "user_uuid")
                      if q.get(name))
        return (scope, types,
                _timestamp("created_from", q["created_from"]) if q.get("created_from") else None,
                _timestamp("created_to", q["created_to"]) if q.get("created_to") else None,
                exact, (q.get("message") or "").lower(), q.get("o", "-created"))

    def _select(self, filters: tuple[Any, ...]) -> list[int]:
        key = (filters, len(self.store.event_log.events))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        scope, types, created_from, created_to, exact, message, order = filters
        log = self.store.event_log
        found = []
        for at in log.positions(scope, created_from, created_to):
            event = log.events[at]
            if types is not None and event.event_type not in types:
                continue
            if any(event.context.get(name) != value for name, value in exact):
                continue
            if message and message not in event.message.lower():
                continue
            found.append(at)
        if order != "created":
            found.reverse()
        self._cache[key] = found
        if len(self._cache) > 32:
            self._cache.popitem(last=False)
        return found

    async def list(self, request: web.Request) -> web.Response:
        viewer = self.api.auth(request)
        order = request.query.get("o", "-created")
        if order not in ("created", "-created"):
            raise ValidationError({"o": [f"Select a valid choice. {order} is not one of the available choices."]})
        filters = self._filters(request, viewer)
        selected = [] if filters is None else self._select(filters)
        events, fields = self.store.event_log.events, request.query.getall("field", [])
        return self.api.paginate(request, selected, lambda at: self.render(events[at], fields),
                                 max_page_size=rest.EVENTS_MAX_PAGE_SIZE)

    async def retrieve(self, request: web.Request) -> web.Response:
        """Staff see any event; others an event in the feed of an object they may see."""
        viewer = self.api.auth(request)
        log = self.store.event_log
        at = log.by_uuid.get(norm_uuid(request.match_info["uuid"]) or "")
        if at is None:
            raise NotFound()
        event = log.events[at]
        if not viewer.is_staff and not any(self._visible(viewer, scope) for scope in event.scopes):
            raise NotFound()
        return rest.json_response(self.render(event, []))

    def _visible(self, viewer: User, scope: str) -> bool:
        try:
            return self._scope(viewer, scope) is not None
        except ValidationError:
            return False

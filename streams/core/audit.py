"""The audit's matching, pure: Waldur's username-change records against usync's PATCHes and
the broker events it folded (``usync audit``: streams/ops/audit.py says what each group means).

Matching, per offering user and new username: a PATCH pairs with the record whose time
is nearest within ``skew`` (the answer comes after the save; the hosts' clocks may differ
by that much), first where the old username agrees too, then where only the new one does
(usync read A before someone else changed it: the pair is kept and says so). A broker
event pairs with a record when it arrived within ``skew`` before to ``broker_delay``
after it (default one hour: Waldur's queues drop messages older than that), one event
per record; consecutive events that carry the same username (``update`` then
``username_set``, redeliveries) are one sighting. Records are reported when they fall in
``[since, until)``; the sources are read wider (:meth:`Window.reading`) so that a record
near an edge still finds its pair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

#: The hosts' clocks and a PATCH's round trip: a record and an outcome this far apart still pair.
DEFAULT_SKEW = timedelta(minutes=2)
#: Waldur's queues expire messages after an hour (x-message-ttl 3600000): a broker event later than that is another change.
DEFAULT_BROKER_DELAY = timedelta(hours=1)


class LoggedChange(msgspec.Struct, frozen=True, kw_only=True):
    """A username change in Waldur's event log."""

    event_uuid: str
    created: datetime
    offering_user_uuid: str
    old: str
    new: str
    actor: str = ""  # who made it (the request's user), "" outside a request


class Patch(msgspec.Struct, frozen=True, kw_only=True):
    """A PATCH usync made: a corrected outcome."""

    link: str
    user_username: str
    offering_user_uuid: str
    old: str
    new: str
    at: datetime
    cause_event_id: str = ""


class Sighting(msgspec.Struct, frozen=True, kw_only=True):
    """A broker event usync folded: it carried ``username`` for the offering user."""

    event_id: str
    offering_user_uuid: str
    username: str
    received_at: datetime


class Window(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    skew: timedelta = DEFAULT_SKEW
    broker_delay: timedelta = DEFAULT_BROKER_DELAY

    def reading(self) -> tuple[datetime, datetime]:
        """What to read: the window widened by what may still pair with a record inside it."""
        return self.since - self.skew, self.until + self.broker_delay

    def holds(self, moment: datetime) -> bool:
        return self.since <= moment < self.until


class Match(msgspec.Struct, kw_only=True):
    change: LoggedChange
    patch: Patch | None = None
    sighting: Sighting | None = None


class Report(msgspec.Struct, kw_only=True):
    site: str
    window: Window
    matched: list[Match]
    only_waldur: list[LoggedChange]
    only_usync: list[Patch]
    waldur_records: int = 0
    patches: int = 0
    sightings: int = 0
    calls: int = 0  # HTTP requests to the site's event log
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.only_waldur and not self.only_usync


# -- the pure matching ---------------------------------------------------------------------


def _pair(changes: Sequence[LoggedChange], candidates: list[Any], when: Callable[[Any], datetime],
          low: timedelta, high: timedelta) -> dict[int, Any]:
    """change index -> the candidate taken: for each change in time order, the unused
    candidate nearest in time with ``created - low <= when(candidate) <= created + high``."""
    taken: dict[int, Any] = {}
    free = sorted(candidates, key=when)
    for i in sorted(range(len(changes)), key=lambda i: changes[i].created):
        created = changes[i].created
        fits = [c for c in free if created - low <= when(c) <= created + high]
        if fits:
            best = min(fits, key=lambda c: abs(when(c) - created))
            free.remove(best)
            taken[i] = best
    return taken


def _sightings_once(sightings: Iterable[Sighting]) -> list[Sighting]:
    """Consecutive broker events of one offering user carrying the same username: one sighting."""
    by_user: dict[str, list[Sighting]] = defaultdict(list)
    for s in sightings:
        by_user[s.offering_user_uuid].append(s)
    kept = []
    for events in by_user.values():
        events.sort(key=lambda s: s.received_at)
        kept += [s for n, s in enumerate(events) if n == 0 or events[n - 1].username != s.username]
    return kept


def match(changes: Sequence[LoggedChange], patches: Sequence[Patch], sightings: Sequence[Sighting],
          window: Window, site: str = "") -> Report:
    """Sort Waldur's records and usync's PATCHes into matched, only in Waldur, only in usync."""
    changes = list(changes)
    by_new: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, c in enumerate(changes):
        by_new[(c.offering_user_uuid, c.new)].append(i)
    patch_of: dict[int, Patch] = {}
    left: dict[tuple[str, str], list[Patch]] = defaultdict(list)
    for p in patches:
        left[(p.offering_user_uuid, p.new)].append(p)
    for same_old in (True, False):  # first where the old username agrees, then where only the new one does
        for key, indices in by_new.items():
            for old in ({changes[i].old for i in indices} if same_old else {None}):
                group = [i for i in indices if i not in patch_of and (old is None or changes[i].old == old)]
                offered = [p for p in left[key] if old is None or p.old == old]
                for at, p in _pair([changes[i] for i in group], offered, lambda p: p.at,
                                   window.skew, window.skew).items():
                    patch_of[group[at]] = p
                    left[key].remove(p)
    seen: dict[tuple[str, str], list[Sighting]] = defaultdict(list)
    for s in _sightings_once(sightings):
        seen[(s.offering_user_uuid, s.username)].append(s)
    sighting_of: dict[int, Sighting] = {}
    for key, indices in by_new.items():
        for at, s in _pair([changes[i] for i in indices], seen.get(key, []), lambda s: s.received_at,
                           window.skew, window.broker_delay).items():
            sighting_of[indices[at]] = s
    matched, only_waldur = [], []
    for i, c in sorted(enumerate(changes), key=lambda ic: ic[1].created):
        if not window.holds(c.created):
            continue
        if i in patch_of or i in sighting_of:
            matched.append(Match(change=c, patch=patch_of.get(i), sighting=sighting_of.get(i)))
        else:
            only_waldur.append(c)
    only_usync = sorted((p for ps in left.values() for p in ps if window.holds(p.at)), key=lambda p: p.at)
    return Report(site=site, window=window, matched=matched, only_waldur=only_waldur, only_usync=only_usync,
                  waldur_records=len(changes), patches=len(patches), sightings=len(sightings))

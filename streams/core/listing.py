"""A reconcile listing compared with the table: what the events topic must hear of it.

The reconciler lists every page of an offering into the listings topic (kept a few
intervals). Each link's fold compares the pages with its own table and writes, to the
events topic kept for ever, only what the listing would change there:

- a :class:`~streams.contract.schema.Listed` fact per listed offering user whose
  listed username, state, uuid or restricted flag is not what the link's row holds and
  is newer than what the row holds;
- once every page of the listing was compared, an
  :class:`~streams.contract.schema.Unlisted` fact per offering user the row holds in one
  of the listed states that the listing did not have;

and the reconciler writes one :class:`~streams.contract.schema.ListingSummary` per
listing, which sets the side's mark (``streams.core.fold``).

The comparison never changes the table: only the facts do, when they are folded from
the events topic, as every other fact is. So the table never holds what the events
topic does not imply, and "nothing changed" is always decided against a table built
from the permanent topics alone. That is the trap Kafka Streams fell into with
emit-on-change (KIP-557, disabled again in KAFKA-12508): a restarted task compared
against state that already held the new value, whose emission had been lost. Here a
worker killed between comparing and writing leaves the table as it was and the page
uncommitted; the next owner compares again and writes the facts.

Measured (``bench/bench_history.py``): a converged pass writes 1 record per offering
listed instead of every user (260 B each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from streams.contract.config import Link
from streams.contract.schema import (
    Envelope,
    Listed,
    OfferingUserRecord,
    Origin,
    SnapshotPage,
    Unlisted,
    normalize_uuid,
    state_display,
)
from streams.core.routing import SOURCE, TARGET, Side
from streams.core.table import Row, TableState, mark_key, row_key

#: Listings whose pages are still arriving, per worker; a listing cut short (a worker
#: restarted between its pages) is dropped after this many newer ones of the same side.
OPEN_LISTINGS: Final = 4


def micros(envelope: Envelope) -> int:
    return int(envelope.received_at.timestamp() * 1_000_000)


def _side(row: Row, side: Side) -> tuple[str | None, str | None, str | None, bool, int, int, int]:
    """A side's (uuid, username, state, restricted, username_at, state_at, observed_at)."""
    if side == SOURCE:
        return (row.b_offering_user_uuid, row.b_username, row.b_state, row.b_restricted,
                row.b_username_at, row.b_state_at, row.b_observed_at)
    return (row.a_offering_user_uuid, row.a_username, row.a_state, False,
            row.a_username_at, row.a_state_at, row.a_observed_at)


def differs(state: TableState, link: str, side: Side, record: OfferingUserRecord, seen: int,
            mark: int | None = None) -> bool:
    """Folding ``record`` (observed at ``seen``) into ``link``'s ``side`` would change a row's
    values or the identity index (tests/unit/test_listing.py holds it to the fold itself);
    ``mark``: the side's, when the caller has it."""
    if seen < (state.marks.get(mark_key(link, side), 0) if mark is None else mark):
        return False
    uuid = record.uuid if len(record.uuid) == 32 and record.uuid.islower() else normalize_uuid(record.uuid)
    user = record.user_username
    if state.index.get(f"{link}:{side}:{uuid}") != user:
        return True  # a new offering user, or one that was another user's
    row = state.rows.get(f"{link}:{user}")
    if row is None:
        return True
    if side == SOURCE:
        username, row_state, username_at, state_at = row.b_username, row.b_state, row.b_username_at, row.b_state_at
        if record.is_restricted != row.b_restricted and seen >= row.b_observed_at:
            return True
    else:
        username, row_state, username_at, state_at = row.a_username, row.a_state, row.a_username_at, row.a_state_at
    if (record.username or "") != username and seen >= username_at:
        return True
    listed_state = record.state if record.state == row_state else state_display(record.state)
    return listed_state != row_state and seen >= state_at


@dataclass
class _Open:
    """One listing of one (link, side) whose pages are being compared."""

    began: int  # when its first page was requested (µs)
    began_at: datetime
    page: Envelope  # its last page seen (where the Unlisted facts are addressed)
    pages: set[int] = field(default_factory=set)
    uuids: set[str] = field(default_factory=set)


class Listings:
    """Compares listing pages with the table page by page (:meth:`compare`, in the fold),
    then, once a listing is complete, finds who it did not have (:meth:`unlisted`, in the
    worker's periodic scan over every row: one scan answers every listing completed
    since the last, instead of one per link).

    The listings under way are a worker's memory: one cut short by a restart or a
    rebalance gets no Unlisted facts, and the next pass finds them. Nothing the table
    holds is lost by that: the table is never ahead of the events topic."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, str], _Open] = {}
        self.complete: dict[tuple[str, str], list[_Open]] = {}  # (link, side): awaiting the scan
        self.cut_short: list[str] = []  # listings whose first pages this worker did not see (the stage logs them)

    def compare(self, state: TableState, link: Link, side: Side, envelope: Envelope) -> list[Envelope]:
        page = envelope.body
        if not isinstance(page, SnapshotPage):
            return []
        seen = micros(envelope)
        key = (link.name, side, page.snapshot_id)
        listing = self.open.get(key)
        if listing is None:
            listing = self.open[key] = _Open(began=seen, began_at=envelope.received_at, page=envelope)
            self._forget_old(link.name, side)
        if seen < listing.began:
            listing.began, listing.began_at = seen, envelope.received_at
        listing.pages.add(page.page)
        listing.page = envelope
        facts = []
        mark = state.marks.get(mark_key(link.name, side), 0)
        uuids = listing.uuids
        for record in page.users:
            uuids.add(normalize_uuid(record.uuid))
            if differs(state, link.name, side, record, seen, mark):
                facts.append(_listed(state, link.name, side, envelope, page, record))
        if page.last:
            del self.open[key]
            if listing.pages == set(range(1, page.page + 1)):  # Waldur's pages count from 1
                self.complete.setdefault((link.name, side), []).append(listing)
            else:
                self.cut_short.append(f"listing {page.snapshot_id} of {link.name}'s {side}: {len(listing.pages)} "
                                      f"of its {page.page} pages seen here")
        return facts

    def _forget_old(self, link: str, side: str) -> None:
        mine = [key for key in self.open if key[0] == link and key[1] == side]
        for key in mine[:-OPEN_LISTINGS]:
            del self.open[key]

    def take_complete(self) -> dict[tuple[str, str], list[_Open]]:
        """The complete listings not scanned for yet; the scan that takes them calls :meth:`unlisted`."""
        complete, self.complete = self.complete, {}
        return complete

    @staticmethod
    def unlisted(state: TableState, row: Row, complete: dict[tuple[str, str], list[_Open]]) -> list[Envelope]:
        """Unlisted facts for ``row``: a complete listing of one of its sides, in its state,
        did not have its offering user, and nothing newer than the listing's start set that state."""
        facts = []
        for side in (SOURCE, TARGET):
            for listing in complete.get((row.link, side), ()):
                uuid, username, row_state, _restricted, _username_at, state_at, _observed = _side(row, side)
                page = listing.page.body
                assert isinstance(page, SnapshotPage)
                if uuid is None or uuid in listing.uuids or row_state not in page.states or listing.began < state_at \
                        or listing.began < state.marks.get(mark_key(row.link, side), 0):
                    continue
                body = Unlisted(link=row.link, snapshot_id=page.snapshot_id, states=page.states,
                                offering_user_uuid=uuid, user_username=row.user_username, was_username=username,
                                was_state=row_state)
                facts.append(_fact(listing.page, f"{page.snapshot_id}:{row.link}:{uuid}:unlisted", listing.began_at,
                                   body))
        return facts


def _listed(state: TableState, link: str, side: Side, envelope: Envelope, page: SnapshotPage,
            record: OfferingUserRecord) -> Envelope:
    row = state.rows.get(row_key(link, record.user_username))
    was = _side(row, side) if row is not None else None
    body = Listed(link=link, snapshot_id=page.snapshot_id, states=page.states, user=record,
                  was_username=was[1] if was else None, was_state=was[2] if was else None)
    return _fact(envelope, f"{page.snapshot_id}:{link}:{normalize_uuid(record.uuid)}", envelope.received_at, body)


def _fact(page: Envelope, event_id: str, received_at: datetime, body: Listed | Unlisted) -> Envelope:
    return Envelope(event_id=event_id, site=page.site, origin=Origin.RECONCILE, offering_uuid=page.offering_uuid,
                    queue=page.queue, received_at=received_at, body=body)

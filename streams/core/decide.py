"""Decisions over the table and the live APIs: what to correct.

The fold says a (link, user) *may* need a correction; the sink then reads both offering
users live and :func:`decide` says what to do. The table can lag the world, the live
read cannot, so only ``decide`` ever leads to a PATCH.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

import msgspec

from streams.contract.config import Link
from streams.contract.schema import OfferingUserRecord, OutcomeAction, state_display
from streams.core.routing import Routes, compile_routes
from streams.core.table import OK, Row, TableState, desired, eligible

__all__ = ["Decision", "RetryWindow", "SkipReason", "Verdict", "correction_needed", "decide", "drift",
           "needing_correction", "refused", "rejected", "retry_due"]


def correction_needed(row: Row, link: Link) -> bool:
    """B qualifies, A's user is present and eligible, and their usernames differ."""
    wanted = desired(row)
    return wanted is not None and eligible(row, link) and (row.a_username or "") != wanted


def refused(row: Row) -> bool:
    """A refused to set B's current username while holding its current one.

    The mark is a fact on the events topic (a :class:`~streams.contract.schema.Rejection`
    the correct stage writes, folded into the row), not state of the correct stage: a
    replay, a restarted worker or a partition's next owner rebuilds it (invariant 2).
    It stops holding as soon as B's or A's username changes; the table, not a timer of
    the stage, says so. Measured before (issue 19): without it, the re-raise timer sent
    one GET on B, one GET and one refused PATCH on A per minute per such user, forever.
    """
    return row.rejected_count > 0 and row.rejected_desired == desired(row) \
        and row.rejected_observed == (row.a_username or "")


class RetryWindow(NamedTuple):
    """How long a refused row waits before it is tried once more: ``first`` seconds after
    the first refusal, doubling with every refusal in a row, at most ``cap``. A refusal
    may be lifted on A's side (a reserved name released, a conflict removed) without any
    event usync would see; the doubling keeps the cost of finding out at a few calls a day."""

    first: float = 3600.0
    cap: float = 86400.0

    def seconds(self, count: int) -> float:
        return min(self.first * 2.0 ** max(0, count - 1), self.cap)


def retry_due(row: Row, now_micros: int, window: RetryWindow) -> bool:
    """A refused row's retry window has passed."""
    return now_micros >= row.rejected_at + int(window.seconds(row.rejected_count) * 1_000_000)


def needing_correction(state: TableState, links: Sequence[Link] | Routes, keys: Iterable[str]) -> list[Row]:
    """The rows among ``keys`` (a fold's ``dirty``) that should become correction requests
    (not the refused ones: a reconcile restating them changes nothing A would accept)."""
    by_name = compile_routes(links).by_name
    found = []
    for key in keys:
        row = state.rows.get(key)
        link = by_name.get(row.link) if row is not None else None
        if link is not None and correction_needed(row, link) and not refused(row):  # type: ignore[arg-type]
            found.append(row)
    return found


class LinkDrift(NamedTuple):
    """One link's rows as :func:`drift_by_link` found them."""

    rows: int  # every row of the link
    drift: list[Row]  # A wrong, usync will correct it
    rejected: list[Row]  # A wrong because A refused B's username


def drift_by_link(state: TableState, links: Sequence[Link] | Routes) -> dict[str, LinkDrift]:
    """Every link's rows, drift and refused rows, in one pass over the table: each row is
    read (decoded, from a faust table) once, whatever the number of links. A pass per link
    read every row once per link: at 200 links and 70k rows a worker, the reraise scan
    took 35-151 s and blocked the event loop (``bench/bench_federation.py --full``)."""
    by_name = compile_routes(links).by_name
    counts = dict.fromkeys(by_name, 0)
    drifting: dict[str, list[Row]] = {name: [] for name in by_name}
    refusing: dict[str, list[Row]] = {name: [] for name in by_name}
    for row in state.rows.values():
        link = by_name.get(row.link)
        if link is None:
            continue
        counts[link.name] += 1
        if correction_needed(row, link):
            (refusing if refused(row) else drifting)[link.name].append(row)
    return {name: LinkDrift(counts[name], drifting[name], refusing[name]) for name in by_name}


def drift(state: TableState, link: Link) -> list[Row]:
    """The rows of ``link`` whose A side the table says is wrong and that usync will
    correct; refused rows are :func:`rejected`, not drift. (Many links: :func:`drift_by_link`.)"""
    return drift_by_link(state, [link])[link.name].drift


def rejected(state: TableState, link: Link) -> list[Row]:
    """The rows of ``link`` whose A side differs from B because A refused B's username."""
    return drift_by_link(state, [link])[link.name].rejected


class Verdict(str, enum.Enum):
    PATCH = "patch"
    ALREADY_EQUAL = "already-equal"
    SKIPPED = "skipped"


class SkipReason(str, enum.Enum):
    B_MISSING = "B offering user not found"
    A_MISSING = "A offering user not found"
    NOT_SAME_USER = "A and B offering users belong to different users"
    B_NOT_OK = "B offering user is not OK"
    B_RESTRICTED = "B offering user is restricted"
    B_EMPTY = "B username is empty"
    A_NOT_ELIGIBLE = "A offering user is not in a state the link corrects"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the sink does for one (link, user) after reading both sides live.

    For PATCH: set A's ``offering_user_uuid`` to ``desired``. ``observed`` is A's
    username as read (for the outcome record).
    """

    verdict: Verdict
    reason: str = ""
    offering_user_uuid: str | None = None
    desired: str | None = None
    observed: str | None = None

    @property
    def outcome_action(self) -> OutcomeAction:
        """The outcome a sink records when this decision is carried out successfully."""
        return _OUTCOME[self.verdict]


_OUTCOME: Final = {
    Verdict.PATCH: OutcomeAction.CORRECTED,
    Verdict.ALREADY_EQUAL: OutcomeAction.ALREADY_EQUAL,
    Verdict.SKIPPED: OutcomeAction.SKIPPED,
}


def _skip_reason(link: Link, b_live: OfferingUserRecord | None, a_live: OfferingUserRecord | None) -> SkipReason | None:
    if b_live is None:
        return SkipReason.B_MISSING
    if a_live is None:
        return SkipReason.A_MISSING
    if b_live.user_username != a_live.user_username:  # a rename between the fold and now
        return SkipReason.NOT_SAME_USER
    if state_display(b_live.state) != OK:
        return SkipReason.B_NOT_OK
    if b_live.is_restricted:
        return SkipReason.B_RESTRICTED
    if not b_live.username:
        return SkipReason.B_EMPTY
    if state_display(a_live.state) not in link.target_states:
        return SkipReason.A_NOT_ELIGIBLE
    return None


def decide(link: Link, b_live: OfferingUserRecord | None, a_live: OfferingUserRecord | None) -> Decision:
    """PATCH A to B's username only if, as read live, both qualify and they differ.

    ``None`` for a side means its GET answered 404.
    """
    wanted = b_live.username if b_live is not None else None
    observed = a_live.username if a_live is not None else None
    reason = _skip_reason(link, b_live, a_live)
    if reason is not None:
        return Decision(verdict=Verdict.SKIPPED, reason=reason.value, desired=wanted, observed=observed)
    assert a_live is not None  # _skip_reason checked it
    if (observed or "") == wanted:
        return Decision(verdict=Verdict.ALREADY_EQUAL, desired=wanted, observed=observed)
    return Decision(verdict=Verdict.PATCH, offering_user_uuid=a_live.uuid, desired=wanted, observed=observed)

"""The username table: what usync knows of each (link, user), and the identity index.

State is four string-keyed mappings, so the Faust worker can back them with Faust
tables (RocksDB) and replay and tests with plain dicts:

- ``rows``:    ``<link>:<user_username>``           -> :class:`Row`
- ``index``:   ``<link>:<side>:<offering_user_uuid>`` -> user_username
- ``pending``: ``<link>:<side>:<offering_user_uuid>`` -> :class:`Pending`
- ``marks``:   ``<link>:<side>``                     -> when the newest complete listing of
  that side began (µs): facts observed before it are older than the listing
  (``streams.core.fold``, :class:`~streams.contract.schema.ListingSummary`)

Link names cannot contain ``:`` (see ``streams.contract.config.Name``), so a key splits at its first
colon. ``desired`` and ``actual`` are derived from a row, never stored: storing them
would let them disagree with the facts they come from. The index is derived from the
rows too (:func:`derived_index`: each side's offering user names the row that holds it);
the fold keeps it so as it writes rows, and a worker rebuilds it from the rows instead
of storing it.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from streams.contract.config import Link

OK: Final = "OK"
DELETED: Final = "Deleted"
#: A side's state after a complete listing in its states did not have it (an Unlisted fact).
UNLISTED: Final = "Unlisted"


class Row(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True, array_like=True):
    """One user of one link: B's side (``b_*``, the source) and A's side (``a_*``, the target).

    Each field holds the value of the newest fact that set it, by observation time
    (``*_at``, microseconds since the epoch; ties go to topic order), so facts that set
    different fields commute. ``*_event_id`` is the id of the side's newest fact.

    A worker stores rows in a compact format of its own (``streams.adapters.faust.rowcodec``:
    103 B for a converged row, the link and user in the key). Rows it stored before as a
    msgpack array of these fields in this order (2026-12) still decode, so the field order
    is a storage format: a new field goes at the end, with a default.
    """

    link: str
    user_username: str
    b_offering_user_uuid: str | None = None
    b_username: str | None = None
    b_state: str | None = None
    b_restricted: bool = False  # only snapshots and lookups carry it; events do not
    b_event_id: str | None = None
    b_observed_at: int = 0  # of the side's newest fact (uuid, event id, restricted)
    b_username_at: int = 0
    b_state_at: int = 0
    # When B was read live (a snapshot record or a lookup), while that read is B's newest
    # fact; 0 once an event is newer. A correction may then trust B as the row has it
    # instead of reading B again (one identity site feeding many: see streams.stages.correct).
    b_read_at: int = 0
    a_offering_user_uuid: str | None = None
    a_username: str | None = None
    a_state: str | None = None
    a_event_id: str | None = None
    a_observed_at: int = 0
    a_username_at: int = 0
    a_state_at: int = 0
    # The newest Rejection fact: A refused ``rejected_desired`` while holding
    # ``rejected_observed``, ``rejected_count`` times in a row, the last at
    # ``rejected_at`` (µs). Not a side's observation: it never moves ``*_observed_at``.
    rejected_desired: str | None = None
    rejected_observed: str | None = None
    rejected_at: int = 0
    rejected_count: int = 0


class Pending(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event that could not be attributed to a user yet: its lookup is outstanding.

    Kept in the table (not only in memory) so that a restarted worker can re-issue the
    lookups that were in flight when it died.
    """

    link: str
    side: str
    site: str
    offering_uuid: str
    offering_user_uuid: str
    event_id: str
    # What the event would set, merged over every event parked for this offering user
    # (field by field, newest observation wins), applied once the user is known.
    observed_at: int = 0
    username: str | None = None
    username_at: int = 0
    state: str | None = None
    state_at: int = 0


@dataclass(slots=True)
class TableState:
    """The fold's whole state. Any ``MutableMapping`` will do as storage."""

    rows: MutableMapping[str, Row] = field(default_factory=dict)
    index: MutableMapping[str, str] = field(default_factory=dict)
    pending: MutableMapping[str, Pending] = field(default_factory=dict)
    marks: MutableMapping[str, int] = field(default_factory=dict)


def empty_state() -> TableState:
    return TableState()


def row_key(link: str, user_username: str) -> str:
    return f"{link}:{user_username}"


def split_row_key(key: str) -> tuple[str, str]:
    link, _, user_username = key.partition(":")
    return link, user_username


def index_key(link: str, side: str, offering_user_uuid: str) -> str:
    return f"{link}:{side}:{offering_user_uuid}"


def mark_key(link: str, side: str) -> str:
    return f"{link}:{side}"


def row_index_keys(row: Row) -> list[str]:
    """The index keys that name ``row``: one per side whose offering user it knows."""
    keys = []
    if row.b_offering_user_uuid is not None:
        keys.append(index_key(row.link, "source", row.b_offering_user_uuid))
    if row.a_offering_user_uuid is not None:
        keys.append(index_key(row.link, "target", row.a_offering_user_uuid))
    return keys


def derived_index(rows: Iterable[Row]) -> dict[str, str]:
    """The identity index the rows imply: ``<link>:<side>:<offering_user_uuid>`` -> user."""
    return {key: row.user_username for row in rows for key in row_index_keys(row)}


def desired(row: Row) -> str | None:
    """The username B wants, or None when B does not qualify (not OK, empty, restricted)."""
    if row.b_state == OK and row.b_username and not row.b_restricted:
        return row.b_username
    return None


def eligible(row: Row, link: Link) -> bool:
    """A has this user in a state the link may correct (default OK, Creating, Requested)."""
    return row.a_offering_user_uuid is not None and row.a_state in link.target_states


def actual(row: Row, link: Link) -> str | None:
    """A's username when A's user is eligible (``""`` when it has none), else None."""
    if not eligible(row, link):
        return None
    return row.a_username or ""


def as_dict(state: TableState) -> dict[str, Any]:
    """The whole state as plain, key-sorted builtins: for JSON export and comparisons."""
    return {
        "rows": {key: row_builtins(state.rows[key]) for key in sorted(state.rows)},
        "index": {key: state.index[key] for key in sorted(state.index)},
        "pending": {key: msgspec.to_builtins(state.pending[key]) for key in sorted(state.pending)},
        "marks": {key: state.marks[key] for key in sorted(state.marks)},
    }


_ROW_DEFAULTS: Final = {f.name: f.default for f in msgspec.structs.fields(Row)}


def row_builtins(row: Row) -> dict[str, Any]:
    """A row as a JSON-ready dict of its fields, the default-valued ones left out."""
    return {name: value for name, value in msgspec.structs.asdict(row).items() if value != _ROW_DEFAULTS[name]}

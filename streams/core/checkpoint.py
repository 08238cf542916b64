"""Table checkpoints (the checkpoints topic) and the side-by-side split of a table.

A worker writes the table of each partition it folds as a checkpoint
(``streams.stages.checkpoint``): :class:`CheckpointPart` records holding the rows and
parked events, then one :class:`CheckpointManifest` naming them, with the instant the
state is as of and, per events-topic partition, an offset before which every fact is in
the state (``covers``). A replay starts from the newest manifest of every partition and
folds the events topic from the lowest of their ``covers`` on: the facts between a
partition's ``covers`` and the instant are folded a second time, which the fold allows
(re-reading any stretch changes nothing: tests/unit/test_fold_properties.py).

The fold of one link splits by side: a side's facts come from its own offering's
partition and set only that side's fields (``b_*``; ``a_*`` and ``rejected_*``), index
entries, parked events and mark. So replay folds events-topic partitions in separate
processes, each holding only the sides its partitions feed, and :func:`merge` joins the
halves of each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final

import msgspec
from msgspec.structs import replace

from streams.contract.schema import SCHEMA_VERSION
from streams.core.table import Pending, Row, TableState

CHECKPOINT_ROWS: Final = 1000  # rows per part: ~300 kB of JSON, under Kafka's 1 MB record


class CheckpointPart(msgspec.Struct, kw_only=True, tag="part", tag_field="kind", omit_defaults=True):
    """Some of one partition's rows (each a JSON array in Row's field order) and parked events."""

    schema_version: int = SCHEMA_VERSION
    checkpoint_id: str
    partition: int
    seq: int
    rows: list[Row] = []
    pending: list[Pending] = []
    previous: int = -1  # the partition's manifest before this checkpoint (as on the manifest)


class CheckpointManifest(msgspec.Struct, kw_only=True, tag="manifest", tag_field="kind", omit_defaults=True):
    """One partition's checkpoint is complete: its parts are at ``parts`` (offsets on this
    topic partition); the state is as of ``instant``; every fact before ``covers[p]`` on
    events-topic partition ``p`` is in it. ``previous``: the offset of the partition's
    manifest before this one (-1: none), so a reader finds the newest before any instant
    by reading back from there."""

    schema_version: int = SCHEMA_VERSION
    checkpoint_id: str
    partition: int
    instant: datetime
    covers: dict[int, int]
    parts: list[int]
    rows: int
    links: list[str]
    marks: dict[str, int] = {}
    previous: int = -1


CheckpointRecord = CheckpointPart | CheckpointManifest
checkpoint_encoder = msgspec.json.Encoder()
checkpoint_decoder = msgspec.json.Decoder(CheckpointRecord)


def parts_of(checkpoint_id: str, partition: int, rows: list[Row], pending: list[Pending], previous: int = -1,
             size: int = CHECKPOINT_ROWS) -> list[CheckpointPart]:
    """The parts of one partition's checkpoint (at least one, so a manifest always has one)."""
    parts = [CheckpointPart(checkpoint_id=checkpoint_id, partition=partition, seq=seq, rows=rows[i:i + size],
                            previous=previous)
             for seq, i in enumerate(range(0, max(len(rows), 1), size))]
    parts[-1].pending = pending
    return parts


def load(state: TableState, parts: Iterable[CheckpointPart], marks: dict[str, int]) -> int:
    """Put checkpoint parts into ``state`` (the index follows the rows); return the rows loaded."""
    loaded = 0
    for part in parts:
        for row in part.rows:
            key = f"{row.link}:{row.user_username}"
            state.rows[key] = row
            if row.b_offering_user_uuid is not None:
                state.index[f"{row.link}:source:{row.b_offering_user_uuid}"] = row.user_username
            if row.a_offering_user_uuid is not None:
                state.index[f"{row.link}:target:{row.a_offering_user_uuid}"] = row.user_username
            loaded += 1
        for parked in part.pending:
            state.pending[f"{parked.link}:{parked.side}:{parked.offering_user_uuid}"] = parked
    state.marks.update(marks)
    return loaded


# -- one side of a row ------------------------------------------------------------------

_SOURCE_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(Row) if f.name.startswith("b_"))
_TARGET_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(Row)
                              if f.name.startswith(("a_", "rejected_")))
_DEFAULTS: Final = {f.name: f.default for f in msgspec.structs.fields(Row)}


def only_side(row: Row, side: str) -> Row:
    """``row`` with the other side's fields at their defaults."""
    other = _TARGET_FIELDS if side == "source" else _SOURCE_FIELDS
    return replace(row, **{name: _DEFAULTS[name] for name in other})


def project(state: TableState, owned: Callable[[str, str], bool]) -> TableState:
    """The part of ``state`` of the (link, side)s ``owned`` says are this process's."""
    mine = TableState()
    for key, row in state.rows.items():
        source, target = owned(row.link, "source"), owned(row.link, "target")
        if source or target:
            mine.rows[key] = row if source and target else only_side(row, "source" if source else "target")
    for part, theirs in ((mine.index, state.index), (mine.pending, state.pending), (mine.marks, state.marks)):
        for key, value in theirs.items():
            link, side = key.split(":", 2)[:2]
            if owned(link, side):
                part[key] = value  # type: ignore[index]
    return mine


# Row's fields in order: link, user_username, the source side's, then the target side's (and
# the rejection's), so a side is a slice of ``astuple``: merging a row costs 1.6 µs instead of
# the 2.75 that a getattr per field took (timeit).
_NAMES: Final = tuple(f.name for f in msgspec.structs.fields(Row))
_TARGET_AT: Final = len(_NAMES) - len(_TARGET_FIELDS)
assert _NAMES[2:_TARGET_AT] == _SOURCE_FIELDS and _NAMES[_TARGET_AT:] == _TARGET_FIELDS, "Row's field order"
_SOURCE_DEFAULTS: Final = tuple(_DEFAULTS[name] for name in _SOURCE_FIELDS)
_TARGET_DEFAULTS: Final = tuple(_DEFAULTS[name] for name in _TARGET_FIELDS)


def merge_rows(mine: Row, theirs: Row) -> Row:
    """The row whose source side is the one of the two that has one, and the target side too."""
    fields = msgspec.structs.astuple(theirs)
    source = theirs if fields[2:_TARGET_AT] != _SOURCE_DEFAULTS else mine
    target = theirs if fields[_TARGET_AT:] != _TARGET_DEFAULTS else mine
    if source is target:
        return source
    return replace(source, **dict(zip(_TARGET_FIELDS, msgspec.structs.astuple(target)[_TARGET_AT:])))


def merge(into: TableState, other: TableState) -> None:
    """Join ``other``'s sides into ``into`` (states folded from disjoint sets of sides)."""
    for key, row in other.rows.items():
        mine = into.rows.get(key)
        into.rows[key] = row if mine is None else merge_rows(mine, row)
    into.index.update(other.index)
    into.pending.update(other.pending)
    into.marks.update(other.marks)

"""Reconcile listings compared with the table (streams.core.listing), against the fold itself.

The oracle of every property here is the fold: a listing's differences are what folding
the whole listing would change; after its facts and its summary, the table holds what
the listing said (or something newer); and a fact older than the listing, arriving after
it, changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contract.schema import Envelope, ListingSummary, Origin, SnapshotPage, listing_digest
from streams.core import as_dict, empty_state, fold, fold_by_link, fold_many
from streams.core.checkpoint import merge, project
from streams.core.fold import _values
from streams.core.listing import Listings, differs
from streams.core.routing import SOURCE, TARGET
from streams.core.table import UNLISTED, TableState
from tests.unit.test_fold_properties import (
    ENDPOINTS, LINKS, OFF_A, OFF_B, T0, USERNAMES, USERS, histories, ou, record,
)

B_TO_A = LINKS[0]
LATER = T0 + timedelta(seconds=10)
SIDES = {SOURCE: ("b", OFF_B, 0), TARGET: ("a", OFF_A, 1)}
LISTED_STATES = {SOURCE: ["OK"], TARGET: ["OK", "Creating", "Requested"]}


def copy(state: TableState) -> TableState:
    return TableState(rows=dict(state.rows), index=dict(state.index), pending=dict(state.pending),
                      marks=dict(state.marks))


def values(state: TableState) -> dict:
    return {key: _values(row) for key, row in state.rows.items()}


@st.composite
def listing(draw, side: str):
    """A complete listing of one side of b-to-a: an offering user and a user at most once each (as Waldur lists)."""
    site, offering, e = SIDES[side]
    records = []
    users = draw(st.permutations(USERS))
    for n, user in zip(draw(st.lists(st.integers(0, 2), unique=True, max_size=3)), users):
        records.append(record(ou(e, n), user, offering, draw(st.sampled_from(USERNAMES)),
                              draw(st.sampled_from(LISTED_STATES[side])), draw(st.booleans())))
    split = draw(st.integers(0, len(records)))
    pages = [records[:split], records[split:]] if draw(st.booleans()) else [records]
    return [Envelope(event_id=f"s:{i}", site=site, origin=Origin.LISTING, offering_uuid=offering,
                     received_at=LATER + timedelta(milliseconds=i),
                     body=SnapshotPage(snapshot_id="s", offering_uuid=offering, states=LISTED_STATES[side], page=i + 1,
                                       last=i == len(pages) - 1, total=len(records), users=users))
            for i, users in enumerate(pages)]


def summary(pages: list[Envelope]) -> Envelope:
    first = pages[0]
    users = [user for page in pages for user in page.body.users]
    return Envelope(event_id="s", site=first.site, origin=Origin.RECONCILE, offering_uuid=first.offering_uuid,
                    received_at=first.received_at,
                    body=ListingSummary(snapshot_id="s", offering_uuid=first.offering_uuid, states=first.body.states,
                                        pages=len(pages), total=len(users), listed=len(users),
                                        digest=listing_digest(users), finished_at=LATER))


def reconcile(state: TableState, side: str, pages: list[Envelope]) -> list[Envelope]:
    """What a worker writes to the events topic for a listing: its differences, then who it lacked."""
    listings = Listings()
    result = fold_by_link(state, [B_TO_A], [(B_TO_A.name, page) for page in pages], listings)
    complete = listings.take_complete()
    facts = list(result.facts)
    for row in list(state.rows.values()):
        facts.extend(listings.unlisted(state, row, complete))
    return facts


FAST = settings(max_examples=200, deadline=None)


@FAST
@given(histories, st.sampled_from([SOURCE, TARGET]), st.data())
def test_a_record_differs_exactly_when_folding_it_would_change_the_table(history, side, data):
    state = empty_state()
    fold_many(state, [B_TO_A], history)
    site, offering, _ = SIDES[side]
    for page in data.draw(listing(side)):
        for one in page.body.users:
            after = copy(state)
            fold(after, [B_TO_A], Envelope(event_id="x", site=site, origin=Origin.SNAPSHOT, offering_uuid=offering,
                                           received_at=page.received_at, body=page.body.__class__(
                                               **{**msgspec.structs.asdict(page.body), "users": [one]})))
            changed = values(after) != values(state) or dict(after.index) != dict(state.index)
            assert differs(state, B_TO_A.name, side, one, int(page.received_at.timestamp() * 1e6)) == changed


@FAST
@given(histories, st.sampled_from([SOURCE, TARGET]), st.data())
def test_after_a_passes_facts_the_table_holds_what_the_whole_listing_would_have_set(history, side, data):
    state = empty_state()
    fold_many(state, [B_TO_A], history)
    pages = data.draw(listing(side))
    whole = copy(state)
    fold_many(whole, [B_TO_A], [msgspec.structs.replace(page, origin=Origin.SNAPSHOT) for page in pages])
    facts = reconcile(state, side, pages)
    fold_many(state, [B_TO_A], [summary(pages), *facts])
    listed = {user.uuid for page in pages for user in page.body.users}
    for key, row in whole.rows.items():
        ours = state.rows[key]
        uuid = row.b_offering_user_uuid if side == SOURCE else row.a_offering_user_uuid
        expected = _values(row)
        if uuid is not None and uuid not in listed and (row.b_state if side == SOURCE else row.a_state) \
                in LISTED_STATES[side]:  # the listing did not have it: Unlisted
            expected = _values(msgspec.structs.replace(row, **{("b_state" if side == SOURCE else "a_state"): UNLISTED}))
        assert _values(ours) == expected, key
    # a pass over what it just wrote finds nothing more
    assert reconcile(state, side, pages) == []


@FAST
@given(histories, st.sampled_from([SOURCE, TARGET]), histories, st.data())
def test_facts_older_than_a_listing_that_arrive_after_it_change_nothing(history, side, late, data):
    state = empty_state()
    fold_many(state, [B_TO_A], history)
    pages = data.draw(listing(side))
    fold_many(state, [B_TO_A], [summary(pages), *reconcile(state, side, pages)])
    before = as_dict(state)
    site, offering, _ = SIDES[side]
    stale = [item for item in late if (item.site, item.offering_uuid) == (site, offering)
             and item.origin is not Origin.REJECTION]
    fold_many(state, [B_TO_A], stale)  # every one observed at T0, before the listing
    assert as_dict(state) == before


@FAST
@given(histories)
def test_folding_each_sides_partitions_apart_and_merging_gives_the_same_table(history):
    # replay --processes: a process folds some endpoints (partitions), with only their sides
    whole = empty_state()
    fold_many(whole, LINKS, history)
    halves = []
    for mine in ({0, 2, 4}, {1, 3}):
        state = empty_state()
        fold_many(state, LINKS, [item for item in history
                                 if ENDPOINTS.index((item.site, item.offering_uuid)) in mine])
        halves.append(state)
    merged = empty_state()
    for half in halves:
        merge(merged, half)
    assert as_dict(merged) == as_dict(whole)


@FAST
@given(histories, histories)
def test_a_checkpoint_split_by_side_then_folded_apart_and_merged_gives_the_same_table(before, after):
    whole = empty_state()
    fold_many(whole, LINKS, before + after)
    checkpoint = empty_state()
    fold_many(checkpoint, LINKS, before)
    merged = empty_state()
    for mine in ({0, 2, 4}, {1, 3}):
        sides = {(link.name, side) for link in LINKS for side, endpoint in ((SOURCE, link.source), (TARGET, link.target))
                 if ENDPOINTS.index((endpoint.site, endpoint.offering)) in mine}
        state = project(checkpoint, lambda link, side: (link, side) in sides)
        fold_many(state, LINKS, [item for item in after if ENDPOINTS.index((item.site, item.offering_uuid)) in mine])
        merge(merged, state)
    assert as_dict(merged) == as_dict(whole)

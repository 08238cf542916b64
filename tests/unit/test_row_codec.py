"""How the worker stores a row: a msgpack array, and rows stored as maps before still decode."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from streams.adapters.faust.tables import ROW
from streams.core import Row
from streams.core.table import row_builtins

UUID = st.text("0123456789abcdef", min_size=32, max_size=32)
NAME = st.none() | st.text(min_size=1, max_size=20)
TIME = st.integers(min_value=0, max_value=2**62)
ROWS = st.builds(Row, link=st.just("b-to-a"), user_username=st.text(min_size=1, max_size=20),
                 b_offering_user_uuid=st.none() | UUID, b_username=NAME, b_state=st.sampled_from([None, "OK", "Deleted"]),
                 b_restricted=st.booleans(), b_event_id=st.none() | UUID, b_observed_at=TIME, b_username_at=TIME,
                 b_read_at=TIME, a_offering_user_uuid=st.none() | UUID, a_username=NAME, a_state_at=TIME,
                 rejected_desired=NAME, rejected_count=st.integers(min_value=0, max_value=1000))


def as_map(row: Row) -> bytes:
    """The row as the worker stored it before: a msgpack map of its non-default fields."""
    return msgspec.msgpack.encode(row_builtins(row))


@given(ROWS)
def test_a_row_round_trips_as_an_array_and_a_stored_map_decodes_to_the_same_row(row: Row):
    raw = ROW.encode(row)
    assert isinstance(msgspec.msgpack.decode(raw), list)
    assert ROW.decode(raw) == row
    assert ROW.decode(as_map(row)) == row


def test_an_array_is_smaller_than_the_map_it_replaces():
    row = Row(link="b-to-a", user_username="user0000001", b_offering_user_uuid="1" * 32, b_username="alice",
              b_state="OK", b_event_id="2" * 32, b_observed_at=1_796_126_091_327_974, b_username_at=1_796_126_091_327_974,
              a_offering_user_uuid="3" * 32, a_username="alice", a_state="OK", a_event_id="4" * 32,
              a_observed_at=1_796_126_091_328_070)
    assert len(ROW.encode(row)) < 0.7 * len(as_map(row))


def test_row_builtins_leaves_out_the_default_fields():
    row = Row(link="l", user_username="u", b_username="x", rejected_count=2)
    assert row_builtins(row) == {"link": "l", "user_username": "u", "b_username": "x", "rejected_count": 2}

"""How the worker stores a row (``streams.adapters.faust.rowcodec``, format v2): exact round trips,
both earlier formats (a full array, a map) still decode, a converged row fits in 125 bytes.

Garbage: bytes that are not msgpack raise ``msgspec.DecodeError``; msgpack that is no row format
raises ``msgspec.ValidationError`` (a subclass of ``DecodeError``).
"""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.adapters.faust.rowcodec import ROWS
from streams.core import Row
from streams.core.table import row_builtins, row_key

HEX = st.text("0123456789abcdef", min_size=32, max_size=32)
#: ids: mostly the normal hex form, but also near misses that must stay strings
ID = st.none() | HEX | HEX.map(str.upper) | st.uuids().map(str) | st.text(max_size=40) \
    | st.text("0123456789abcdef", min_size=31, max_size=33) | HEX.map(lambda h: h[:30] + " " + h[31:])
TEXT = st.none() | st.text(max_size=20) | st.sampled_from(["OK", "Deleted", ""])
#: msgpack holds [-2**63, 2**64 - 1]; observed_at minus a value may not fit, the codec copes
INT = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.integers(min_value=0, max_value=2**62) | st.just(0)
LINK = st.text(min_size=1, max_size=12).filter(lambda s: ":" not in s)


@st.composite
def rows(draw: st.DrawFn) -> Row:
    """Arbitrary rows, often converged (A as B, every *_at its side's observed_at) or nearly so."""
    b_at, a_at = draw(INT), draw(INT)
    def at(observed: int) -> int:
        return draw(st.just(observed) | st.just(0) | INT)
    b_username, b_state = draw(TEXT), draw(TEXT)
    return Row(link=draw(LINK), user_username=draw(st.text(max_size=20)),
               b_offering_user_uuid=draw(ID), b_username=b_username, b_state=b_state, b_restricted=draw(st.booleans()),
               b_event_id=draw(ID), b_observed_at=b_at, b_username_at=at(b_at), b_state_at=at(b_at), b_read_at=at(b_at),
               a_offering_user_uuid=draw(ID), a_username=draw(st.just(b_username) | TEXT),
               a_state=draw(st.just(b_state) | TEXT), a_event_id=draw(ID), a_observed_at=a_at,
               a_username_at=at(a_at), a_state_at=at(a_at), rejected_desired=draw(st.none() | TEXT),
               rejected_observed=draw(st.none() | TEXT), rejected_at=draw(st.just(0) | INT),
               rejected_count=draw(st.just(0) | INT))


def converged(n: int = 123) -> Row:
    """A row as bench/bench_memory.py builds it: both sides read, A as B."""
    t, user = 1_796_139_080_132_405, f"user{n:07d}"
    return Row(link="b-to-a", user_username=user, b_offering_user_uuid=uuid.uuid4().hex, b_username=f"{user}_x",
               b_state="OK", b_event_id=uuid.uuid4().hex, b_observed_at=t, b_username_at=t, b_state_at=t, b_read_at=t,
               a_offering_user_uuid=uuid.uuid4().hex, a_username=f"{user}_x", a_state="OK",
               a_event_id=uuid.uuid4().hex, a_observed_at=t + 14, a_username_at=t + 14, a_state_at=t + 14)


def key(row: Row) -> str:
    return row_key(row.link, row.user_username)


def full_array(row: Row) -> bytes:
    """The row as the worker stored it in 2026-12, before v2: every field, in Row's order."""
    return msgspec.msgpack.encode(row)


@given(rows())
def test_every_row_round_trips_exactly(row: Row):
    assert ROWS.decode(key(row), ROWS.encode(row)) == row


@given(rows().filter(lambda r: all(-(2**63) <= v <= 2**64 - 1 for v in msgspec.structs.astuple(r) if type(v) is int)))
def test_a_row_stored_as_a_full_array_or_as_a_map_decodes_to_the_same_row(row: Row):
    assert ROWS.decode(key(row), full_array(row)) == row
    assert ROWS.decode(key(row), msgspec.msgpack.encode(row_builtins(row))) == row


def test_the_link_and_user_come_from_the_key_split_at_its_first_colon():
    row = msgspec.structs.replace(converged(), user_username="a:b:c")
    raw = ROWS.encode(row)
    assert b"b-to-a" not in raw and b"a:b:c" not in raw
    assert ROWS.decode("b-to-a:a:b:c", raw) == row


def test_a_converged_row_takes_at_most_125_bytes_less_than_half_of_a_full_array():
    row = converged()
    raw = ROWS.encode(row)
    assert len(raw) <= 125
    assert len(raw) < 0.5 * len(full_array(row))
    assert len(ROWS.encode(msgspec.structs.replace(row, b_read_at=0))) <= 125  # B read, then an event


def test_ids_that_are_not_lowercase_hex_stay_strings():
    for odd in ("", "ABCDEF0123456789ABCDEF0123456789", str(uuid.uuid4()), "abc", "0" * 31, "0" * 33,
                "00112233445566778899aabbccddee f", None):
        row = msgspec.structs.replace(converged(), a_event_id=odd, b_offering_user_uuid=odd)
        back = ROWS.decode(key(row), ROWS.encode(row))
        assert back == row and type(back.a_event_id) is type(odd)


@pytest.mark.parametrize("raw", [b"\xc1", b"", b"\x96\x02\xc4"])
def test_bytes_that_are_not_msgpack_raise_a_decode_error(raw: bytes):
    with pytest.raises(msgspec.DecodeError):
        ROWS.decode("l:u", raw)


@pytest.mark.parametrize("value", [1, "row", [], [1, 2], {"link": 1}, [2, "not ids"], [2, b"x" * 63],
                                   [2, [1, None, None, None]], [2, b"x" * 64, None, None, 0, 0, 7],
                                   [2, b"x" * 64, None, None, 0, 0, [False]]])
def test_msgpack_that_is_no_row_format_raises_a_validation_error(value):
    with pytest.raises(msgspec.ValidationError):
        ROWS.decode("l:u", msgspec.msgpack.encode(value))


def test_row_builtins_leaves_out_the_default_fields():
    row = Row(link="l", user_username="u", b_username="x", rejected_count=2)
    assert row_builtins(row) == {"link": "l", "user_username": "u", "b_username": "x", "rejected_count": 2}

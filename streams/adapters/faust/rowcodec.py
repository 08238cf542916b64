"""A compact storage format for :class:`streams.core.Row` (format v2), and the codec that reads all three.

A v2 value is a msgpack array whose first element is the small int ``2`` (a msgspec tag), so it
cannot be mistaken for either earlier format: a full array of Row's fields in order (2026-12,
first element the link name, a string) or the older map (before 2026-12). :class:`_V2` and
:class:`_Tail` give the storage order. How each Row field is kept:

- ``link``, ``user_username``: not stored; :meth:`RowCodec.decode` takes them from the key
  (``<link>:<user_username>``, split at the first ``:``; link names have none).
- ``b_offering_user_uuid``, ``b_event_id``, ``a_offering_user_uuid``, ``a_event_id`` (``ids``): when
  all four are exactly 32 lowercase hex characters (``normalize_uuid``'s form; event ids are uuid
  hex too), one 64-byte bin of their bytes; else a 4-array of, per id, its 16 bytes (when it is
  such hex) or the string itself or nil. msgspec refuses a ``bytes | str | None`` union ("not more
  than one str-like type"), so the 4-array's items are ``Any``: msgpack tells bin from str, and
  decode checks what it got (:func:`_unhex`).
- ``b_username``, ``b_state``, ``b_observed_at``, ``a_observed_at``: as they are.
- ``tail``, left out (the array ends) when it would say only "converged": ``a_username`` and
  ``a_state`` as on B, every ``*_at`` equal to its side's ``observed_at``, not restricted, no
  rejection. Otherwise a nested array:

  - ``a_username``, ``a_state``: ``true`` when equal to ``b_username``/``b_state`` (None == None
    too), else the value (a string or nil);
  - ``b_username_at``, ``b_state_at``, ``b_read_at``, ``a_username_at``, ``a_state_at``: their
    side's ``observed_at`` minus the value (equal: ``0``, 1 byte); nil is the value 0 ("never"); a
    value newer than ``observed_at`` is a negative delta; a delta msgpack cannot hold (beyond
    int64/uint64) is the value itself in a 1-array. Every value round-trips exactly;
  - ``b_restricted``, ``rejected_*``: last, and left out when all are defaults.

Measured (this machine, 2 CPUs shared, ``timeit`` best of 5 x 200k; a converged row as
``bench/bench_memory.py`` builds it: ``uuid4().hex`` uuids and event ids, ``user0000123_x``, ``OK``,
µs timestamps ~1.8e15, A observed 14 µs after B)::

                                            bytes  encode    decode
    a full array (2026-12)                   260   0.28 µs   0.71 µs
    ROWS (v2), converged                     103   1.35 µs   1.7-1.9 µs
    ROWS (v2), converged, b_read_at 0        104   1.5 µs    1.85 µs
    ROWS (v2), a_username differs (tail)     116   1.8 µs    2.4 µs
    ROWS (v2), restricted and rejected       128   1.9 µs    2.4 µs   (a full array: 264 B)
    ROWS decoding a full array                         -     0.9 µs
    ROWS decoding an old map                           -     3.4-3.8 µs

The v2 cost is Python: the hex check and conversion of the ids, and building the Row (from a tuple with
``msgspec.convert``: 0.7 µs, where 22 keywords to ``Row(...)`` take 1.0 µs). msgspec itself encodes a v2
value in 0.14 µs and decodes one in 0.23 µs.

Decode dispatches on the second byte (``0x02``: v2; else the full array, then the map). Garbage that is not msgpack raises ``msgspec.DecodeError``; msgpack that is
none of the three formats raises ``msgspec.ValidationError`` (a subclass of ``DecodeError``).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from streams.core import Row

TAG: Final = 2
_SAME: Final = True  # a_username / a_state: "as on B"
#: A timestamp: its delta to observed_at, the value 0 (None), or itself when the delta overflows msgpack.
Delta = int | tuple[int] | None
_UNREAD: Final = 0  # tail: converged, b_read_at 0 (an event is newer than B's last read)
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


#: A v2 value has at most 7 items, so it starts with a fixarray byte (0x92-0x97), then the tag: no legacy
#: value has 0x02 second (full arrays have 22 items, 0xdc 0x00 0x16; a map's second byte is a str header).
_V2_SECOND_BYTE: Final = bytes([TAG])


class _Tail(msgspec.Struct, array_like=True, gc=False):
    a_username: str | bool | None = _SAME
    a_state: str | bool | None = _SAME
    b_username_at: Delta = 0
    b_state_at: Delta = 0
    b_read_at: Delta = 0
    a_username_at: Delta = 0
    a_state_at: Delta = 0
    b_restricted: bool = False
    rejected_desired: str | None = None
    rejected_observed: str | None = None
    rejected_at: int = 0
    rejected_count: int = 0


class _V2(msgspec.Struct, tag=TAG, array_like=True, gc=False):
    ids: bytes | tuple[Any, Any, Any, Any]
    b_username: str | None = None
    b_state: str | None = None
    b_observed_at: int = 0
    a_observed_at: int = 0
    tail: _Tail | int | None = None  # None: converged, 0 (_UNREAD): converged but b_read_at 0


# -- encode ------------------------------------------------------------------------------------

def _hex(value: str | None) -> bytes | str | None:
    """16 bytes for exactly 32 lowercase hex characters, else the value unchanged."""
    if value is not None and len(value) == 32:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return value
        if raw.hex() == value:  # fromhex also takes upper case and whitespace
            return raw
    return value


def _ids(row: Row) -> bytes | tuple[Any, ...]:
    bu, be, au, ae = row.b_offering_user_uuid, row.b_event_id, row.a_offering_user_uuid, row.a_event_id
    if bu is not None and be is not None and au is not None and ae is not None \
            and len(bu) == len(be) == len(au) == len(ae) == 32:
        joined = bu + be + au + ae
        try:
            raw = bytes.fromhex(joined)
        except ValueError:
            raw = b""
        if raw.hex() == joined:
            return raw
    return (_hex(bu), _hex(be), _hex(au), _hex(ae))


def _delta(observed: int, value: int) -> Delta:
    return None if value == 0 else observed - value


def _wide(observed: int, value: int) -> Delta:
    """:func:`_delta`, or the value itself when the delta is beyond msgpack's ints."""
    delta = _delta(observed, value)
    return (value,) if delta is not None and not _INT_MIN <= delta <= _UINT_MAX else delta


def _tail(row: Row, delta: Any) -> tuple[Any, ...] | int | None:
    b_at, a_at = row.b_observed_at, row.a_observed_at
    same_name, same_state = row.a_username == row.b_username, row.a_state == row.b_state
    plain = not row.b_restricted and row.rejected_count == 0 and row.rejected_at == 0 \
        and row.rejected_desired is None and row.rejected_observed is None
    if plain and same_name and same_state and row.b_username_at == row.b_state_at == b_at \
            and row.a_username_at == row.a_state_at == a_at:
        if row.b_read_at == b_at:
            return None
        if row.b_read_at == 0:
            return _UNREAD
    head = (_SAME if same_name else row.a_username, _SAME if same_state else row.a_state,
            delta(b_at, row.b_username_at), delta(b_at, row.b_state_at), delta(b_at, row.b_read_at),
            delta(a_at, row.a_username_at), delta(a_at, row.a_state_at))
    if plain:
        return head
    return (*head, row.b_restricted, row.rejected_desired, row.rejected_observed, row.rejected_at, row.rejected_count)


def _stored(row: Row, delta: Any = _delta) -> tuple[Any, ...]:
    """The v2 array (without its defaults at the end), as a tuple: msgspec encodes it as it would a _V2."""
    head = (TAG, _ids(row), row.b_username, row.b_state, row.b_observed_at, row.a_observed_at)
    tail = _tail(row, delta)
    return head if tail is None else (*head, tail)


# -- decode ------------------------------------------------------------------------------------

def _unhex(value: Any) -> str | None:
    cls = value.__class__
    if cls is bytes and len(value) == 16:
        return value.hex()
    if cls is str or value is None:
        return value
    raise msgspec.ValidationError(f"Expected `str | null` or 16 bytes, got {value!r} (an id)")


def _split_ids(ids: bytes | tuple[Any, ...]) -> tuple[str | None, str | None, str | None, str | None]:
    if ids.__class__ is bytes:
        if len(ids) != 64:
            raise msgspec.ValidationError(f"Expected 64 bytes, got {len(ids)} (ids)")
        h = ids.hex()  # type: ignore[union-attr]
        return h[:32], h[32:64], h[64:96], h[96:]
    bu, be, au, ae = ids
    return _unhex(bu), _unhex(be), _unhex(au), _unhex(ae)


def _undelta(observed: int, delta: Delta) -> int:
    if delta is None:
        return 0
    if delta.__class__ is int:
        return observed - delta  # type: ignore[operator]
    return delta[0]  # type: ignore[index]


def _same(stored: str | bool | None, b_value: str | None) -> str | None:
    if stored is _SAME:
        return b_value
    if stored is False:
        raise msgspec.ValidationError("Expected `str | null | true`, got `false` (tail a_username/a_state)")
    return stored  # type: ignore[return-value]


_convert = msgspec.convert  # a Row from a tuple in field order (Row is array_like): faster than 22 keywords


def _row(key: str, v: _V2) -> Row:
    link, _, user_username = key.partition(":")
    ids, b_at, a_at, bn, bs, t = v.ids, v.b_observed_at, v.a_observed_at, v.b_username, v.b_state, v.tail
    if ids.__class__ is bytes and len(ids) == 64:
        h = ids.hex()  # type: ignore[union-attr]
        bu, be, au, ae = h[:32], h[32:64], h[64:96], h[96:]
    else:
        bu, be, au, ae = _split_ids(ids)
    if t is None or t.__class__ is int:
        if t is None:
            read = b_at
        elif t == _UNREAD:
            read = 0
        else:
            raise msgspec.ValidationError(f"Expected `0 | array | null`, got {t!r} (tail)")
        return _convert((link, user_username, bu, bn, bs, False, be, b_at, b_at, b_at, read,
                         au, bn, bs, ae, a_at, a_at, a_at), Row)
    d1, d2, d3, d4, d5 = t.b_username_at, t.b_state_at, t.b_read_at, t.a_username_at, t.a_state_at
    return _convert((
        link, user_username, bu, bn, bs, t.b_restricted, be, b_at,
        b_at - d1 if d1.__class__ is int else _undelta(b_at, d1),
        b_at - d2 if d2.__class__ is int else _undelta(b_at, d2),
        b_at - d3 if d3.__class__ is int else _undelta(b_at, d3),
        au, bn if t.a_username is _SAME else _same(t.a_username, bn),
        bs if t.a_state is _SAME else _same(t.a_state, bs), ae, a_at,
        a_at - d4 if d4.__class__ is int else _undelta(a_at, d4),
        a_at - d5 if d5.__class__ is int else _undelta(a_at, d5),
        t.rejected_desired, t.rejected_observed, t.rejected_at, t.rejected_count,
    ), Row)


def packed_uuids(raw: bytes) -> tuple[bytes, bytes] | None:
    """B's and A's offering user uuids, 16 raw bytes each, read straight from a v2 value whose
    four ids are hex (a fixarray, the tag, then a 64-byte bin: the usual case); None for any
    other value, whose row must be decoded. Rebuilding the identity index reads only these."""
    if len(raw) >= 68 and raw[0] & 0xF0 == 0x90 and raw[1:4] == b"\x02\xc4\x40":
        return raw[4:20], raw[36:52]
    return None


class _MapRow(Row, array_like=False):
    """A row as stored before rows became arrays: a msgpack map of field names."""


def _legacy() -> Any:
    """Decode a row stored as a full array (Row's field order, 2026-12) or as a map (before)."""
    array = msgspec.msgpack.Decoder(Row).decode
    as_map = msgspec.msgpack.Decoder(_MapRow).decode

    def decode(raw: bytes) -> Row:
        try:
            return array(raw)
        except msgspec.ValidationError:
            return Row(**msgspec.structs.asdict(as_map(raw)))
    return decode


class RowCodec:
    """Rows written in format v2; values stored in either legacy format (an array, a map) still
    decode, and are v2 the next time they are written. ``decode`` needs the row's key (its
    ``link`` and ``user_username`` are not stored)."""

    def __init__(self) -> None:
        encode = msgspec.msgpack.Encoder().encode
        v2 = msgspec.msgpack.Decoder(_V2).decode
        legacy = _legacy()  # the full array, then the map

        def encode_row(row: Row) -> bytes:
            try:
                return encode(_stored(row))
            except OverflowError:  # a delta beyond msgpack's ints (never for real timestamps)
                return encode(_stored(row, _wide))

        def decode_row(key: str, raw: bytes) -> Row:
            if raw[1:2] == _V2_SECOND_BYTE:
                return _row(key, v2(raw))
            return legacy(raw)  # a full array (0xdc, 22 items) or a map (its second byte a key's header)

        self.encode = encode_row
        self.decode = decode_row


ROWS = RowCodec()

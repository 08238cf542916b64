"""The rows table's stored encoding (streams.adapters.faust.tables.RowCodec): msgpack arrays,
and the maps that rows written before it still are in changelogs and RocksDB."""

from __future__ import annotations

import msgspec

from streams.adapters.faust.tables import ROW
from streams.core import Row

ROW_FULL = Row(link="b-to-a", user_username="alice", b_offering_user_uuid="1" * 32, b_username="alice_b", b_state="OK",
               b_event_id="e" * 32, b_observed_at=1764579600000000, b_username_at=1764579600000000, b_read_at=5,
               a_offering_user_uuid="2" * 32, a_username="old", a_state="OK", a_observed_at=7, rejected_count=2)


def test_rows_round_trip_as_arrays_about_half_the_size_of_maps():
    stored = ROW.encode(ROW_FULL)
    assert msgspec.msgpack.decode(stored)[:2] == ["b-to-a", "alice"]  # an array, in field order
    assert ROW.decode(stored) == ROW_FULL
    assert len(stored) < 0.6 * len(msgspec.msgpack.encode(ROW_FULL))


def test_a_row_written_as_a_map_before_the_upgrade_still_decodes():
    written_before = msgspec.msgpack.Encoder().encode(ROW_FULL)  # the codec of the previous release
    assert written_before[0] in (0xDE, 0xDF) or written_before[0] & 0xF0 == 0x80  # a map
    assert ROW.decode(written_before) == ROW_FULL
    assert ROW.decode(msgspec.msgpack.encode(Row(link="l", user_username="u"))) == Row(link="l", user_username="u")


def test_an_array_shorter_than_the_fields_leaves_the_rest_at_their_defaults():
    older = msgspec.msgpack.encode(list(msgspec.structs.astuple(ROW_FULL))[:5])  # fields added since at the end
    assert ROW.decode(older) == Row(link="b-to-a", user_username="alice", b_offering_user_uuid="1" * 32,
                                    b_username="alice_b", b_state="OK")

"""The worker's identity index (streams.adapters.faust.index): derived from the rows, exact, shared keys."""

from __future__ import annotations

from uuid import uuid4

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.faust.index import RowIndex
from streams.adapters.faust.rowcodec import packed_uuids
from streams.adapters.faust.tables import ROW, decode_row
from streams.core import Row, TableState, derived_index, fold, row_key
from tests.unit.test_fold_properties import LINKS, histories
from tests.unit.test_row_codec import rows as any_row


def worker_state() -> tuple[TableState, RowIndex]:
    index = RowIndex(decode_row)
    return TableState(index=index), index


@settings(max_examples=150, deadline=None)
@given(histories)
def test_folded_with_the_worker_index_the_table_is_the_same_and_the_index_the_rows(history):
    plain, (state, index) = TableState(), worker_state()
    store: dict[bytes, bytes] = {}
    for item in history:
        fold(plain, LINKS, item)
        fold(state, LINKS, item)
        assert dict(index) == plain.index  # read while the fold's writes are still buffered
        store.update((key.encode(), ROW.encode(row)) for key, row in state.rows.items())
        index.share(index.take_changes(), store)
        assert dict(index) == plain.index == derived_index(state.rows.values())
    rebuilt = RowIndex(decode_row)
    rebuilt.add(store.items())
    assert dict(rebuilt) == plain.index


def test_only_exact_lowercase_hex_uuids_are_packed_and_look_alikes_stay_apart():
    index = RowIndex(decode_row)
    uuid = "0f" * 16
    look_alikes = ["0x" + "0f" * 15, uuid.upper(), "_".join(["0f" * 8, "0f" * 7 + "0"]), " " + uuid[1:], uuid[:31], "zz"]
    keys = [f"b-to-a:source:{u}" for u in [uuid, *look_alikes]]
    for n, key in enumerate(keys):
        index[key] = f"user{n}"
    index.take_changes()
    assert {key: index[key] for key in keys} == {key: f"user{n}" for n, key in enumerate(keys)}
    assert len(index.slots) == 1 and len(index.other) == len(look_alikes)
    assert index.get("b-to-a:target:" + uuid) is None and index.get("other:source:" + uuid) is None


def test_a_row_in_the_memory_store_and_its_index_entries_hold_one_key_object():
    index, store = RowIndex(decode_row), {}
    row = Row(link="b-to-a", user_username="alice", b_offering_user_uuid="1" * 32)
    store[row_key(row.link, row.user_username).encode()] = ROW.encode(row)  # written before: its own key object
    index[f"b-to-a:source:{'1' * 32}"] = "alice"
    index.share(index.take_changes(), None)  # RocksDB: nothing to share
    row = Row(link="b-to-a", user_username="alice", b_offering_user_uuid="1" * 32, a_offering_user_uuid="2" * 32)
    store[b"b-to-a:alice"] = ROW.encode(row)
    index[f"b-to-a:target:{'2' * 32}"] = "alice"
    index.share(index.take_changes(), store)
    (stored,) = store
    assert [value is stored for *_, value in index.slots.items()] == [True, True]


@settings(max_examples=300, deadline=None)
@given(st.lists(any_row().filter(lambda r: len(r.user_username) > 0), max_size=8), st.booleans())
def test_rebuilt_from_stored_rows_the_index_is_what_they_imply(rows, hex_ids):
    # Rows whose four ids are uuid hex are read without being decoded (rowcodec.packed_uuids).
    if hex_ids:
        rows = [msgspec.structs.replace(r, b_offering_user_uuid=uuid4().hex, b_event_id=uuid4().hex,
                                        a_offering_user_uuid=uuid4().hex, a_event_id=uuid4().hex) for r in rows]
    stored = {row_key(r.link, r.user_username).encode(): ROW.encode(r) for r in rows}
    latest = {key: ROW.decode_at(key.decode(), value) for key, value in stored.items()}
    assert all(packed_uuids(v) is not None for v in stored.values()) or not hex_ids
    index = RowIndex(decode_row)
    index.add(stored.items(), len(stored))
    assert dict(index) == derived_index(latest.values())

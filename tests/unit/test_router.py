"""The route stage's pure parts: grouping raw envelopes by link, and packing them into records."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from streams.core import compile_routes, fold_by_link, fold_many
from streams.core.table import TableState
from streams.stages.route import pack, route_values, unpack
from streams.contract.schema import envelope_encoder
from tests.unit.test_fold import LINKS, OFF_A, OFF_B, OU_A, OU_B, envelope, event, page, record


def raw(*envelopes) -> list[bytes]:
    return [envelope_encoder.encode(e) for e in envelopes]


def test_envelopes_are_grouped_by_link_in_input_order_strays_counted_and_garbage_listed():
    b1 = envelope("b", OFF_B, event("update", OU_B, username="x"), "e1")
    a1 = envelope("a", OFF_A, event("update", OU_A, username="y"), "e2")
    b2 = envelope("b", OFF_B, event("update", OU_B, username="z"), "e3")
    stray = envelope("c", OFF_B, event("update", OU_B), "e4")
    by_link, unrouted, undecodable = route_values(compile_routes(LINKS), raw(b1, a1, stray, b2) + [b"not json", b"[]"])
    link = LINKS[0].name
    assert [e.event_id for e in unpack(b"[" + b",".join(by_link[link]) + b"]")] == ["e1", "e2", "e3"]
    assert unrouted == 1
    assert [i for i, _ in undecodable] == [4, 5] and all(reason.startswith("not an envelope") for _, reason in undecodable)


@given(sizes=st.lists(st.integers(1, 300), max_size=60), max_bytes=st.integers(1, 2_000), max_count=st.integers(1, 10))
def test_pack_keeps_every_value_in_order_within_the_bounds(sizes, max_bytes, max_count):
    values = [b'"' + b"x" * n + b'"' for n in sizes]
    records = [[bytes(v) for v in msgspec.json.decode(r, type=list[msgspec.Raw])] for r in pack(values, max_bytes, max_count)]
    assert [v for items in records for v in items] == values
    for items in records:
        r = b"[" + b",".join(items) + b"]"
        assert len(items) <= max_count
        assert len(r) <= max(max_bytes + 1, max(len(v) for v in items) + 2)


def test_folding_the_packed_records_equals_folding_the_topic():
    history = [
        envelope("b", OFF_B, page(record(OU_B, "alice", "alice_b")), "s1"),
        envelope("a", OFF_A, page(record(OU_A, "alice", "", offering=OFF_A), offering=OFF_A), "s2"),
        envelope("b", OFF_B, event("update", OU_B, username="alice_new", state="OK"), "e1"),
    ]
    by_link, _, _ = route_values(compile_routes(LINKS), raw(*history))
    routed = TableState()
    for link, values in by_link.items():
        for packed in pack(values, max_bytes=200):
            fold_by_link(routed, LINKS, [(link, e) for e in unpack(packed)])
    direct = TableState()
    fold_many(direct, LINKS, history)
    assert routed == direct

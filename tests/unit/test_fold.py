"""The fold, fact by fact: every action, snapshots, lookups, index misses, several links."""

from datetime import datetime, timezone

import msgspec
import pytest

from streams.contract.config import Endpoint, Link
from streams.core import (
    LookupNeeded,
    Row,
    actual,
    as_dict,
    desired,
    empty_state,
    fold,
    fold_by_link,
    fold_many,
    row_key,
    split_row_key,
)
from streams.contract.schema import Envelope, Lookup, OfferingUserEvent, OfferingUserRecord, SnapshotPage, Origin

OFF_A, OFF_B, OFF_C, OFF_D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
B_TO_A = Link(name="b-to-a", source=Endpoint("b", OFF_B), target=Endpoint("a", OFF_A))
B_TO_C = Link(name="b-to-c", source=Endpoint("b", OFF_B), target=Endpoint("c", OFF_C))
A_TO_D = Link(name="a-to-d", source=Endpoint("a", OFF_A), target=Endpoint("d", OFF_D))
LINKS = [B_TO_A]

OU_B = "1" * 32  # alice's offering user on B
OU_A = "2" * 32  # alice's offering user on A
USER = "9" * 32


def envelope(site: str, offering: str, body, event_id: str = "e1") -> Envelope:
    source = {OfferingUserEvent: Origin.STOMP, SnapshotPage: Origin.SNAPSHOT, Lookup: Origin.LOOKUP}[type(body)]
    return Envelope(
        event_id=event_id, site=site, origin=source, offering_uuid=offering,
        received_at=datetime(2026, 1, 1, tzinfo=timezone.utc), body=body,
    )


def on_b(body, event_id: str = "e1") -> Envelope:
    return envelope("b", OFF_B, body, event_id)


def on_a(body, event_id: str = "e1") -> Envelope:
    return envelope("a", OFF_A, body, event_id)


def event(action: str, ou: str = OU_B, **fields) -> OfferingUserEvent:
    return OfferingUserEvent(action=action, offering_user_uuid=ou, user_uuid=USER, **fields)


def record(ou: str = OU_B, user: str = "alice", username: str | None = "alice_b", state: str = "OK",
           restricted: bool = False, offering: str = OFF_B) -> OfferingUserRecord:
    return OfferingUserRecord(uuid=ou, user_uuid=USER, user_username=user, offering_uuid=offering,
                              username=username, state=state, is_restricted=restricted)


def page(*records: OfferingUserRecord, offering: str = OFF_B) -> SnapshotPage:
    return SnapshotPage(snapshot_id="s1", offering_uuid=offering, states=["OK"], page=1, last=True,
                        total=len(records), users=list(records))


def known_alice(links=LINKS, username: str = "alice_b", a_username: str = "old"):
    """A state where both sides of alice are indexed by a snapshot."""
    state = empty_state()
    fold(state, links, on_b(page(record(username=username)), "snap-b"))
    fold(state, links, on_a(page(record(OU_A, username=a_username, state="OK", offering=OFF_A), offering=OFF_A),
                            "snap-a"))
    return state


def alice(state, link: str = "b-to-a") -> Row:
    return state.rows[row_key(link, "alice")]


def test_snapshots_fill_the_index_and_both_sides_of_a_row():
    state = known_alice()
    row = alice(state)
    assert (row.b_offering_user_uuid, row.b_username, row.b_state, row.b_event_id) == (OU_B, "alice_b", "OK", "snap-b")
    assert (row.a_offering_user_uuid, row.a_username, row.a_state, row.a_event_id) == (OU_A, "old", "OK", "snap-a")
    assert state.index == {f"b-to-a:source:{OU_B}": "alice", f"b-to-a:target:{OU_A}": "alice"}
    assert desired(row) == "alice_b" and actual(row, B_TO_A) == "old"


def test_update_sets_username_and_state():
    state = known_alice()
    result = fold(state, LINKS, on_b(event("update", username="new", state="Requested"), "u1"))
    assert (alice(state).b_username, alice(state).b_state, alice(state).b_event_id) == ("new", "Requested", "u1")
    assert result.dirty == ["b-to-a:alice"] and result.lookups == []


def test_attribute_update_sets_the_username_only():
    state = known_alice()
    fold(state, LINKS, on_b(event("update", state="Requested")))
    fold(state, LINKS, on_b(event("attribute_update", username="renamed", attributes={"email": "x"})))
    assert (alice(state).b_username, alice(state).b_state) == ("renamed", "Requested")


def test_username_set_carries_an_integer_state_that_becomes_ok():
    state = known_alice()
    fold(state, LINKS, on_b(event("update", username="", state="Requested")))
    fold(state, LINKS, on_b(event("username_set", username="slurm_name", state=5, resource_backend_ids=["r"])))
    assert (alice(state).b_username, alice(state).b_state) == ("slurm_name", "OK")
    assert desired(alice(state)) == "slurm_name"


def test_create_sets_an_empty_username_and_its_state():
    state = known_alice()
    fold(state, LINKS, on_a(event("create", OU_A, username="", state="Requested")))
    row = alice(state)
    assert (row.a_username, row.a_state) == ("", "Requested")
    assert actual(row, B_TO_A) == ""


def test_delete_marks_the_side_deleted_and_not_eligible():
    state = known_alice()
    fold(state, LINKS, on_a(event("delete", OU_A, username="old")))
    row = alice(state)
    assert (row.a_username, row.a_state) == ("old", "Deleted")
    assert actual(row, B_TO_A) is None


def test_unknown_actions_change_nothing_and_ask_for_nothing():
    state = known_alice()
    before = as_dict(state)
    result = fold(state, LINKS, on_b(event("transmogrify", username="zzz", state="OK")))
    result_unknown_uuid = fold(state, LINKS, on_b(event("transmogrify", "7" * 32, username="zzz")))
    assert as_dict(state) == before
    assert result.dirty == result.lookups == result_unknown_uuid.lookups == []


def test_restricted_comes_from_snapshots_and_survives_events():
    state = empty_state()
    fold(state, LINKS, on_b(page(record(restricted=True))))
    fold(state, LINKS, on_b(event("update", username="other", state="OK")))
    assert alice(state).b_restricted and desired(alice(state)) is None
    fold(state, LINKS, on_b(Lookup(offering_user_uuid=OU_B, status=200, user=record(restricted=False))))
    assert desired(alice(state)) == "alice_b"


def test_an_index_miss_parks_the_event_and_asks_for_a_lookup():
    state = empty_state()
    result = fold(state, LINKS, on_b(event("update", username="x", state="OK"), "u1"))
    assert result.lookups == [LookupNeeded(site="b", offering_uuid=OFF_B, offering_user_uuid=OU_B,
                                           link="b-to-a", cause_event_id="u1")]
    assert result.dirty == [] and state.rows == {}
    assert state.pending[f"b-to-a:source:{OU_B}"].event_id == "u1"


def test_the_lookup_answer_fills_the_index_and_supersedes_the_parked_event():
    state = empty_state()
    fold(state, LINKS, on_b(event("update", username="x", state="OK"), "u1"))
    result = fold(state, LINKS, on_b(Lookup(offering_user_uuid=OU_B, status=200, user=record()), "l1"))
    assert state.pending == {}
    assert (alice(state).b_username, alice(state).b_event_id) == ("alice_b", "l1")
    assert result.dirty == ["b-to-a:alice"]
    fold(state, LINKS, on_b(event("update", username="y", state="OK"), "u2"))  # now it is attributed
    assert alice(state).b_username == "y"


def test_a_404_lookup_marks_a_known_user_gone():
    state = known_alice()
    fold(state, LINKS, on_a(Lookup(offering_user_uuid=OU_A, status=404), "l404"))
    assert (alice(state).a_state, alice(state).a_event_id) == ("Deleted", "l404")


def test_a_404_lookup_for_an_unknown_uuid_drops_the_parked_event():
    state = empty_state()
    fold(state, LINKS, on_b(event("update", username="x", state="OK")))
    result = fold(state, LINKS, on_b(Lookup(offering_user_uuid=OU_B, status=404)))
    assert state.pending == {} and state.rows == {} and result.dirty == []


@pytest.mark.parametrize("status", [401, 403, 500, 503])
def test_a_failed_lookup_says_nothing_and_keeps_the_parked_event(status):
    state = empty_state()
    fold(state, LINKS, on_b(event("update", username="x", state="OK")))
    before = as_dict(state)
    fold(state, LINKS, on_b(Lookup(offering_user_uuid=OU_B, status=status)))
    assert as_dict(state) == before and len(state.pending) == 1


def test_many_links_sharing_a_source_each_get_the_b_side():
    links = [B_TO_A, B_TO_C]
    state = empty_state()
    fold(state, links, on_b(page(record())))
    result = fold(state, links, on_b(event("update", username="z", state="OK")))
    assert sorted(result.dirty) == ["b-to-a:alice", "b-to-c:alice"]
    assert alice(state, "b-to-a").b_username == alice(state, "b-to-c").b_username == "z"


def test_a_link_whose_target_is_another_links_source():
    links = [B_TO_A, A_TO_D]
    state = empty_state()
    fold(state, links, on_a(page(record(OU_A, username="a_name", offering=OFF_A), offering=OFF_A)))
    assert alice(state, "b-to-a").a_username == "a_name"  # A as the target of b-to-a
    assert desired(alice(state, "a-to-d")) == "a_name"  # A as the source of a-to-d
    assert alice(state, "a-to-d").a_offering_user_uuid is None


def test_a_renamed_user_moves_the_offering_user_to_the_new_row():
    state = known_alice()
    fold(state, LINKS, on_b(page(record(user="alice2", username="alice_b"))))
    assert alice(state).b_offering_user_uuid is None and alice(state).b_username is None
    assert alice(state).a_offering_user_uuid == OU_A  # the other side is untouched
    assert state.rows[row_key("b-to-a", "alice2")].b_offering_user_uuid == OU_B


def test_the_same_event_id_twice_is_not_deduplicated():
    # Waldur's x-message-id hashes the content: X -> Y -> X repeats X's id legitimately.
    state = known_alice()
    fold(state, LINKS, on_b(event("update", username="x", state="OK"), "id-x"))
    fold(state, LINKS, on_b(event("update", username="y", state="OK"), "id-y"))
    fold(state, LINKS, on_b(event("update", username="x", state="OK"), "id-x"))
    assert alice(state).b_username == "x"


def test_a_batch_reports_each_dirty_row_and_each_lookup_once():
    state = known_alice()
    unknown = "5" * 32
    result = fold_many(state, LINKS, [
        on_b(event("update", username="p", state="OK")),
        on_b(event("update", username="q", state="OK")),
        on_b(event("update", unknown, username="p", state="OK"), "m1"),
        on_b(event("update", unknown, username="q", state="OK"), "m2"),
        envelope("nowhere", OFF_B, event("update")),
    ])
    assert result.dirty == ["b-to-a:alice"]
    assert [(need.offering_user_uuid, need.cause_event_id) for need in result.lookups] == [(unknown, "m2")]
    assert result.unrouted == 1


def test_fold_by_link_folds_a_repartitioned_envelope_only_into_its_link():
    links = [B_TO_A, B_TO_C]
    state = empty_state()
    result = fold_by_link(state, links, [("b-to-c", on_b(page(record()))), ("b-to-a", on_a(page()))])
    assert list(state.rows) == ["b-to-c:alice"]
    assert result.unrouted == 0
    assert fold_by_link(state, links, [("b-to-c", on_a(page())), ("gone", on_b(page()))]).unrouted == 2


def test_row_keys_split_at_the_first_colon():
    assert split_row_key(row_key("link", "user:with:colons")) == ("link", "user:with:colons")


def test_the_table_exports_as_plain_sorted_json():
    state = known_alice()
    fold(state, LINKS, on_b(event("update", "5" * 32, username="x", state="OK")))
    exported = as_dict(state)
    assert msgspec.json.decode(msgspec.json.encode(exported)) == exported
    assert list(exported) == ["rows", "index", "pending", "marks"]
    assert exported["rows"]["b-to-a:alice"]["b_username"] == "alice_b"


def test_facts_that_only_restate_a_row_do_not_raise_it_again():
    state = known_alice()  # B says alice_b, A says old: a mismatch
    assert fold(state, LINKS, on_b(event("update", username="alice_b", state="OK"), "u1")).dirty == []
    assert fold(state, LINKS, on_b(event("username_set", username="alice_b", state=5), "u2")).dirty == []
    # the sink's own reads after a refused PATCH restate the mismatch: no endless re-verification
    read_a = Lookup(offering_user_uuid=OU_A, status=200, user=record(OU_A, username="old", offering=OFF_A))
    assert fold(state, LINKS, on_a(read_a, "l1")).dirty == []


def test_a_snapshot_restating_a_mismatch_raises_it_again():
    state = known_alice()
    result = fold(state, LINKS, on_b(page(record(username="alice_b")), "snap-b2"))
    assert result.dirty == ["b-to-a:alice"]

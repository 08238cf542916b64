"""Properties of the fold over any history (hypothesis), and the oracle: the existing agent's rule.

Histories are drawn from a small world on purpose (few offering users, few usernames,
few event ids) so that collisions -- the same user from two sides, an index miss later
filled, X -> Y -> X with a repeated id, a rename -- happen in almost every example.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contract.config import Endpoint, Link
from streams.core import as_dict, derived_index, desired, drift, empty_state, fold, fold_by_link, fold_many, routes
from streams.contract.schema import Envelope, Lookup, OfferingUserEvent, OfferingUserRecord, Rejection, SnapshotPage, Origin

OFF_A, OFF_B, OFF_C, OFF_D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
B_TO_A = Link(name="b-to-a", source=Endpoint("b", OFF_B), target=Endpoint("a", OFF_A))
B_TO_C = Link(name="b-to-c", source=Endpoint("b", OFF_B), target=Endpoint("c", OFF_C))
A_TO_D = Link(name="a-to-d", source=Endpoint("a", OFF_A), target=Endpoint("d", OFF_D))
LINKS = [B_TO_A, B_TO_C, A_TO_D]  # a shared source, and a target that is another link's source
ENDPOINTS = [("b", OFF_B), ("a", OFF_A), ("c", OFF_C), ("d", OFF_D), ("x", "e" * 32)]  # the last routes nowhere

USERS = ["alice", "bob", "carol"]
USERNAMES = ["", "u1", "u2"]
STATES: list[str | int | None] = [None, "OK", "Requested", "Creating", "Deleted", "Error creating", 5, 1]
ACTIONS = ["create", "update", "delete", "attribute_update", "username_set", "something_new"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FAST = settings(max_examples=150, deadline=None)


def ou(endpoint: int, n: int) -> str:
    return f"{endpoint:016x}{n:016x}"


def content_id(site: str, body) -> str:
    """Like Waldur's x-message-id: identical content, identical id."""
    return hashlib.sha256(site.encode() + msgspec.json.encode(body)).hexdigest()[:32]


def envelope(site: str, offering: str, body, event_id: str, received_at: datetime = T0) -> Envelope:
    source = {OfferingUserEvent: Origin.STOMP, SnapshotPage: Origin.SNAPSHOT, Lookup: Origin.LOOKUP,
              Rejection: Origin.REJECTION}[type(body)]
    return Envelope(event_id=event_id, site=site, origin=source, offering_uuid=offering, received_at=received_at,
                    body=body)


def record(uuid: str, user: str, offering: str, username: str | None, state: str, restricted: bool = False):
    return OfferingUserRecord(uuid=uuid, user_uuid="9" * 32, user_username=user, offering_uuid=offering,
                              username=username, state=state, is_restricted=restricted)


def page(offering: str, records: list[OfferingUserRecord]) -> SnapshotPage:
    return SnapshotPage(snapshot_id="s", offering_uuid=offering, states=["OK"], page=1, last=True,
                        total=len(records), users=records)


# -- any history ---------------------------------------------------------------------

_record_state = st.sampled_from(["OK", "Requested", "Creating", "Deleted", "Pending account linking"])


@st.composite
def any_envelope(draw) -> Envelope:
    e = draw(st.integers(0, len(ENDPOINTS) - 1))
    site, offering = ENDPOINTS[e]
    uuid = ou(e, draw(st.integers(0, 2)))
    kind = draw(st.sampled_from(["event", "event", "snapshot", "lookup", "rejection"]))
    if kind == "event":
        body = OfferingUserEvent(
            action=draw(st.sampled_from(ACTIONS)), offering_user_uuid=uuid, user_uuid="9" * 32,
            username=draw(st.sampled_from([None, *USERNAMES])), state=draw(st.sampled_from(STATES)),
        )
    elif kind == "snapshot":
        records = draw(st.lists(st.builds(
            record, st.builds(ou, st.just(e), st.integers(0, 2)), st.sampled_from(USERS), st.just(offering),
            st.sampled_from([None, *USERNAMES]), _record_state, st.booleans(),
        ), max_size=3))
        body = page(offering, records)
    elif kind == "rejection":  # its link may not be this endpoint's, as the fold must ignore
        body = Rejection(link=draw(st.sampled_from([link.name for link in LINKS])), user_username=draw(st.sampled_from(USERS)),
                         offering_user_uuid=uuid, desired=draw(st.sampled_from(USERNAMES)),
                         observed=draw(st.sampled_from(USERNAMES)), status=400)
        at = T0 + timedelta(seconds=draw(st.integers(0, 3)))  # the count depends on order: times vary
        return envelope(site, offering, body, draw(st.sampled_from(["e0", "e1", "e2"])), at)
    else:
        status = draw(st.sampled_from([200, 404, 500]))
        user = None
        if status == 200:
            user = record(uuid, draw(st.sampled_from(USERS)), offering, draw(st.sampled_from(USERNAMES)),
                          draw(_record_state), draw(st.booleans()))
        body = Lookup(offering_user_uuid=uuid, status=status, user=user)
    return envelope(site, offering, body, draw(st.sampled_from(["e0", "e1", "e2"])))  # ids collide on purpose


histories = st.lists(any_envelope(), max_size=40)


def folded(history: list[Envelope]) -> dict:
    state = empty_state()
    fold_many(state, LINKS, history)
    return as_dict(state)


@FAST
@given(histories)
def test_folding_the_same_history_twice_from_empty_gives_identical_tables(history):
    assert folded(history) == folded(list(history))


@FAST
@given(histories)
def test_the_index_is_always_what_the_rows_imply(history):
    # A worker does not store the index: it rebuilds it from the rows (streams.adapters.faust.tables),
    # which is only right if the fold's own index never says more, or other, than its rows.
    state = empty_state()
    for item in history:
        fold(state, LINKS, item)
        assert dict(state.index) == derived_index(state.rows.values())


@FAST
@given(histories)
def test_folding_a_history_after_itself_changes_nothing(history):
    assert folded(history + history) == folded(history)


@FAST
@given(histories, st.data())
def test_redelivery_from_an_older_offset_changes_nothing(history, data):
    i = data.draw(st.integers(0, len(history)), label="crash after")
    j = data.draw(st.integers(0, i), label="restart from")
    assert folded(history[:i] + history[j:i] + history[i:]) == folded(history)


@FAST
@given(histories, st.data())
def test_a_duplicate_right_after_its_original_changes_nothing(history, data):
    k = data.draw(st.integers(0, max(0, len(history) - 1)), label="duplicated")
    assert folded(history[: k + 1] + history[k : k + 1] + history[k + 1 :]) == folded(history)


@FAST
@given(histories)
def test_one_at_a_time_and_batched_folds_agree(history):
    state = empty_state()
    for item in history:
        fold(state, LINKS, item)
    assert as_dict(state) == folded(history)


@FAST
@given(histories, st.randoms(use_true_random=False))
def test_repartitioning_by_link_gives_the_same_table_whatever_the_interleaving(history, rng):
    # After repartitioning, each link's events keep their order but links interleave freely.
    per_link: dict[str, list] = {}
    for item in history:
        for link, _side in routes(LINKS, item):
            per_link.setdefault(link.name, []).append((link.name, item))
    merged = interleave(list(per_link.values()), rng)
    state = empty_state()
    fold_by_link(state, LINKS, merged)
    assert as_dict(state) == folded(history)


def interleave(sequences: list[list], rng) -> list:
    """A random merge of the sequences that keeps each one's order."""
    queues = [list(reversed(seq)) for seq in sequences if seq]
    merged = []
    while queues:
        queue = rng.choice(queues)
        merged.append(queue.pop())
        if not queue:
            queues.remove(queue)
    return merged


# -- the oracle: the existing agent's rule on the final states -----------------------


class Final(msgspec.Struct, frozen=True):
    """One offering user's state at the end of the history (None: absent from the site)."""

    username: str
    state: str
    restricted: bool = False


def oracle_patches(b: dict[str, Final | None], a: dict[str, Final | None]) -> dict[str, str]:
    """waldur-site-agent's sync rule (its federation plugin), as stated below.

    List B's users with state OK and not restricted: user_username -> username
    (non-empty). List A's users in OK, Creating or Requested; PATCH every one whose
    username differs from B's to B's.
    """
    b_map = {user: f.username for user, f in b.items() if f and f.state == "OK" and not f.restricted and f.username}
    return {
        user: b_map[user]
        for user, f in a.items()
        if f and f.state in ("OK", "Creating", "Requested") and user in b_map and f.username != b_map[user]
    }


_final = st.one_of(
    st.none(),
    st.builds(Final, st.sampled_from(USERNAMES), st.sampled_from(["OK", "Requested", "Creating", "Deleted",
                                                                   "Error creating"]), st.booleans()),
)
SIDES = {"b": ("b", OFF_B, 0), "a": ("a", OFF_A, 1)}


@st.composite
def user_story(draw, side: str, user: str, final: Final | None) -> list[Envelope]:
    """Facts about one offering user whose last word on every field is ``final``."""
    site, offering, e = SIDES[side]
    uuid = ou(e, USERS.index(user))

    def emit(body) -> Envelope:
        return envelope(site, offering, body, content_id(site, body))

    def ev(action: str, username=None, state=None) -> Envelope:
        return emit(OfferingUserEvent(action=action, offering_user_uuid=uuid, user_uuid="9" * 32,
                                      username=username, state=state))

    def filler(username: str, state: str, restricted: bool) -> Envelope:
        rec = record(uuid, user, offering, username, state, restricted)
        if draw(st.booleans()):
            return emit(page(offering, [rec]))
        return emit(Lookup(offering_user_uuid=uuid, status=200, user=rec))

    noise = []
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["event", "filler", "gone"]))
        if what == "event":
            noise.append(ev(draw(st.sampled_from(ACTIONS)), draw(st.sampled_from(USERNAMES)),
                            draw(st.sampled_from(STATES))))
        elif what == "filler":
            noise.append(filler(draw(st.sampled_from(USERNAMES)), draw(_record_state), draw(st.booleans())))
        else:
            noise.append(emit(Lookup(offering_user_uuid=uuid, status=404)))
    if final is None:
        if not draw(st.booleans()):
            return []  # never seen
        ending = [filler(draw(st.sampled_from(USERNAMES)), "OK", False)]
        gone = ev("delete", draw(st.sampled_from(USERNAMES))) if draw(st.booleans()) else \
            emit(Lookup(offering_user_uuid=uuid, status=404))
        return noise + ending + [gone]
    # The anchor sets every field; the tail events restate the final state as Waldur would.
    tail_choices = [ev("update", final.username, final.state), ev("attribute_update", final.username)]
    if final.state == "OK" and final.username:
        tail_choices.append(ev("username_set", final.username, 5))
    tail = draw(st.lists(st.sampled_from(tail_choices), max_size=2))
    return noise + [filler(final.username, final.state, final.restricted)] + tail


@st.composite
def world(draw):
    b = {user: draw(_final, label=f"B {user}") for user in USERS}
    a = {user: draw(_final, label=f"A {user}") for user in USERS}
    stories = [draw(user_story(side, user, finals[user])) for side, finals in (("b", b), ("a", a)) for user in USERS]
    history = merge_snapshot_pages(interleave(stories, draw(st.randoms(use_true_random=False))), draw)
    return b, a, disturb(history, draw)


def merge_snapshot_pages(history: list[Envelope], draw) -> list[Envelope]:
    """Sometimes join neighbouring one-record pages of one offering into one page, as listings are."""
    merged: list[Envelope] = []
    for item in history:
        last = merged[-1] if merged else None
        if (last is not None and isinstance(item.body, SnapshotPage) and isinstance(last.body, SnapshotPage)
                and last.offering_uuid == item.offering_uuid and draw(st.booleans())):
            body = page(item.offering_uuid, last.body.users + item.body.users)
            merged[-1] = envelope(item.site, item.offering_uuid, body, content_id(item.site, body))
        else:
            merged.append(item)
    return merged


def disturb(history: list[Envelope], draw) -> list[Envelope]:
    """At-least-once delivery: duplicates and re-reads from older offsets."""
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(history)))
        j = draw(st.integers(0, i))
        history = history[:i] + history[j:i] + history[i:]
    return history


@settings(max_examples=300, deadline=None)
@given(world())
def test_corrections_equal_the_existing_agents_rule_on_the_final_states(scenario):
    b, a, history = scenario
    state = empty_state()
    fold_many(state, [B_TO_A], history)
    ours = {row.user_username: desired(row) for row in drift(state, B_TO_A)}
    assert ours == oracle_patches(b, a)

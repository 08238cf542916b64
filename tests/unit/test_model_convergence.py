"""Model-based convergence: the pure core, driven through any history, makes A what the
existing agent's rule says it should be.

A model of the two Waldur sites (real state), of the broker (a queue of events that may
lose, duplicate and reorder messages), of the events topic (a list: broker events, the
sink's and the fold's lookups, reconcile snapshots) and of the worker (the table, folded
from the topic; corrections from ``needing_correction``; the sink's live reads judged by
``decide`` and PATCHes applied to the model of A). Hypothesis draws the history: users,
B changes, A drift, event loss, duplication, reordering, worker restarts (folding from
scratch, re-folding an older stretch), reconcile passes and sink runs in any order.

Time is a step counter. Every fact carries when it was observed (``received_at``, which
the fold orders each field by): an event when the bridge relays it, a lookup or snapshot
page when its GET was *sent* -- and a GET's answer may reach the topic later than events
observed after it (``write``). The sink skips a request whose facts are older than its
last successful live verification of that user, as streams/stages/correct.py does.

Then the faults stop and the system settles (deliver, fold, sink, one reconcile pass,
until quiet). A must then equal the seed's rule (``oracle_patches``, the oracle of
test_fold_properties) applied to B's final state, and one more reconcile pass must send
zero PATCHes. Pure: no I/O, no clock, no event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from streams.core import TableState, Verdict, as_dict, decide, empty_state, fold_many, needing_correction
from streams.contract.schema import Envelope, Lookup, OfferingUserEvent, OfferingUserRecord, Origin, SnapshotPage
from tests.unit.test_fold_properties import (
    B_TO_A,
    OFF_A,
    OFF_B,
    T0,
    Final,
    content_id,
    oracle_patches,
    ou,
    page,
    record,
)

LINKS = [B_TO_A]
USERS = ["alice", "bob", "carol", "dave"]
USERNAMES = ["", "u1", "u2", "u3"]
STATES = ["OK", "Requested", "Creating", "Error creating"]
SITES = {"b": (OFF_B, 0), "a": (OFF_A, 1)}
SOURCE_STATES = ["OK"]  # what the reconciler lists on B
TARGET_STATES = list(B_TO_A.target_states)  # and on A


@dataclass
class Request:
    """A correction request as the fold agent builds it from a row."""

    key: str
    user: str
    a_uuid: str | None
    b_uuid: str | None
    observed_at: int  # the newest fact behind it (streams.app: max of both sides' observed_at)


@dataclass
class Model:
    real: dict[str, dict[str, Final | None]]  # site -> user -> state (None: no offering user)
    broker: list[Envelope] = field(default_factory=list)  # published, not yet relayed
    topic: list[Envelope] = field(default_factory=list)  # the events topic
    folded: int = 0  # the worker's position in the topic
    unwritten: list[Envelope] = field(default_factory=list)  # GET answers not yet in the topic
    clock: int = 0  # steps; observation times are T0 + clock seconds
    verified_from: dict[str, int] = field(default_factory=dict)  # the sink's memory (µs)
    state: TableState = field(default_factory=empty_state)
    requests: list[Request] = field(default_factory=list)  # the corrections topic, unconsumed
    patches: int = 0
    snapshots: int = 0

    # -- Waldur: real changes, and the events Waldur publishes for them ---------------------

    def tick(self) -> Any:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    @staticmethod
    def micros(at: Any) -> int:
        return int(at.timestamp() * 1_000_000)

    def uuid(self, site: str, user: str) -> str:
        return ou(SITES[site][1], USERS.index(user))

    def emit(self, site: str, user: str, action: str, username: str | None = None, state: Any = None) -> None:
        body = OfferingUserEvent(action=action, offering_user_uuid=self.uuid(site, user), user_uuid="9" * 32,
                                 username=username, state=state)
        self.broker.append(Envelope(event_id=content_id(site, body), site=site, origin=Origin.STOMP,
                                    offering_uuid=SITES[site][0], received_at=T0, body=body))

    def set_username(self, site: str, user: str, username: str) -> None:
        """What a PATCH does in Waldur: Requested/Creating become OK; update, then username_set."""
        now = self.real[site][user]
        if now is None or now.username == username:
            return
        state = "OK" if username and now.state in ("Requested", "Creating") else now.state
        self.real[site][user] = replace(now, username=username, state=state)
        self.emit(site, user, "update", username, state)
        if username:
            self.emit(site, user, "username_set", username, 5 if state == "OK" else state)

    def set_state(self, site: str, user: str, state: str) -> None:
        now = self.real[site][user]
        if now is None or now.state == state:
            return
        self.real[site][user] = replace(now, state=state)
        self.emit(site, user, "update", now.username, state)

    def set_restricted(self, site: str, user: str, restricted: bool) -> None:
        now = self.real[site][user]
        if now is None or now.restricted == restricted:
            return
        self.real[site][user] = replace(now, restricted=restricted)
        self.emit(site, user, "update", now.username, now.state)  # events do not carry is_restricted

    def create(self, site: str, user: str) -> None:
        if self.real[site][user] is not None:
            return
        self.real[site][user] = Final("", "Requested")
        self.emit(site, user, "create", "", "Requested")

    def delete(self, site: str, user: str) -> None:
        if self.real[site][user] is None:
            return
        self.real[site][user] = None
        self.emit(site, user, "delete")

    def drift(self, user: str, username: str) -> None:
        """A's username changes with no event at all."""
        now = self.real["a"][user]
        if now is not None:
            self.real["a"][user] = replace(now, username=username)

    # -- the REST API as the sink, the fold's lookups and the reconciler read it -------------

    def live(self, site: str, user: str) -> OfferingUserRecord | None:
        now = self.real[site][user]
        if now is None:
            return None
        return record(self.uuid(site, user), user, SITES[site][0], now.username, now.state, now.restricted)

    def get_by_uuid(self, site: str, uuid: str) -> OfferingUserRecord | None:
        for user in USERS:
            if self.uuid(site, user) == uuid:
                return self.live(site, user)
        return None

    def write_lookup(self, site: str, uuid: str, found: OfferingUserRecord | None, asked: Any,
                     delayed: bool = False) -> None:
        """A GET's answer as a fact stamped with when the GET was sent; ``delayed``: it reaches
        the topic only at the next ``write`` step (after events observed later)."""
        body = Lookup(offering_user_uuid=uuid, status=200 if found else 404, user=found)
        fact = Envelope(event_id=f"lookup-{self.clock}-{len(self.topic)}-{len(self.unwritten)}", site=site,
                        origin=Origin.LOOKUP, offering_uuid=SITES[site][0], received_at=asked, body=body)
        (self.unwritten if delayed else self.topic).append(fact)

    def write(self) -> None:
        self.topic.extend(self.unwritten)
        self.unwritten.clear()

    def reconcile(self) -> None:
        """One pass: B listed in OK, A in the link's target states, one page each."""
        self.snapshots += 1
        for site, states in (("b", SOURCE_STATES), ("a", TARGET_STATES)):
            asked = self.tick()
            users = [self.live(site, u) for u in USERS]
            listed = [r for r in users if r is not None and r.state in states]
            body: SnapshotPage = replace(page(SITES[site][0], listed), snapshot_id=f"s{self.snapshots}", states=states)
            self.topic.append(Envelope(event_id=f"snapshot-{self.snapshots}-{site}", site=site, origin=Origin.SNAPSHOT,
                                       offering_uuid=SITES[site][0], received_at=asked, body=body))

    # -- the bridge: the broker's at-least-once delivery, with faults ----------------------

    def relay(self, n: int) -> None:
        """The bridge receives ``n`` messages (stamping when) and writes them to the topic."""
        for message in self.broker[:n]:
            self.topic.append(replace(message, received_at=self.tick()))
        del self.broker[:n]

    # -- the worker ---------------------------------------------------------------------------

    def fold(self, items: list[Envelope]) -> None:
        """Fold a batch; its lookups are answered and written; its corrections queued."""
        result = fold_many(self.state, LINKS, items)
        for need in result.lookups:
            asked = self.tick()
            self.write_lookup(need.site, need.offering_user_uuid, self.get_by_uuid(need.site, need.offering_user_uuid),
                              asked)
        for row in needing_correction(self.state, LINKS, result.dirty):
            self.requests.append(Request(f"{row.link}:{row.user_username}", row.user_username,
                                         row.a_offering_user_uuid, row.b_offering_user_uuid,
                                         max(row.b_observed_at, row.a_observed_at)))

    def fold_new(self) -> None:
        end = len(self.topic)
        self.fold(self.topic[self.folded:end])
        self.folded = end

    def restart_from_scratch(self) -> None:
        """A worker with no table: the topic alone rebuilds it (docs/invariants.md, 2)."""
        before = as_dict(self.state)
        self.state = empty_state()
        self.fold(self.topic[: self.folded])
        assert as_dict(self.state) == before

    def refold(self, start: int) -> None:
        """A crash before the commit: the stretch since an older offset is read again."""
        self.fold(self.topic[start: self.folded])

    def read(self, site: str, uuid: str | None, user: str, delayed: bool) -> OfferingUserRecord | None:
        """The sink's read of one side: by uuid, else by user; the answer written as a fact."""
        asked = self.tick()
        found = self.get_by_uuid(site, uuid) if uuid else None
        if found is not None and found.user_username != user:
            found = None
        if found is None:
            found = self.live(site, user)
        if found is not None:
            self.write_lookup(site, found.uuid, found, asked, delayed)
        elif uuid:
            self.write_lookup(site, uuid, None, asked, delayed)
        return found

    def sink(self, n: int, delayed: bool = False) -> None:
        """Consume ``n`` requests as one batch: coalesced per key, each verified live unless a
        later live verification already covers its facts."""
        batch, self.requests = self.requests[:n], self.requests[n:]
        latest = {r.key: r for r in batch}
        for request in latest.values():
            if request.observed_at and request.observed_at < self.verified_from.get(request.key, 0):
                continue  # SKIPPED: "covered by a later live verification"
            started = self.micros(self.tick())
            b_live = self.read("b", request.b_uuid, request.user, delayed)
            a_live = self.read("a", request.a_uuid, request.user, delayed)
            decision = decide(B_TO_A, b_live, a_live)
            if decision.verdict is Verdict.PATCH:
                assert decision.desired and a_live is not None and decision.offering_user_uuid == a_live.uuid
                self.patches += 1
                self.set_username("a", a_live.user_username, decision.desired)
            if decision.verdict in (Verdict.PATCH, Verdict.ALREADY_EQUAL):
                self.verified_from[request.key] = started

    def quiet(self) -> bool:
        return not self.broker and not self.unwritten and self.folded == len(self.topic) and not self.requests

    def settle(self) -> None:
        """No more faults: relay, fold, correct, until nothing moves (bounded)."""
        for _ in range(50):
            if self.quiet():
                return
            self.relay(len(self.broker))
            self.write()
            self.fold_new()
            self.sink(len(self.requests))
        raise AssertionError("the system did not settle")


_final = st.one_of(st.none(), st.builds(Final, st.sampled_from(USERNAMES), st.sampled_from(STATES), st.booleans()))
_user = st.sampled_from(USERS)
_step = st.one_of(
    st.tuples(st.just("b_username"), _user, st.sampled_from(USERNAMES)),
    st.tuples(st.just("b_state"), _user, st.sampled_from(STATES)),
    st.tuples(st.just("b_restricted"), _user, st.booleans()),
    st.tuples(st.just("b_create"), _user),
    st.tuples(st.just("b_delete"), _user),
    st.tuples(st.just("a_drift"), _user, st.sampled_from(USERNAMES)),
    st.tuples(st.just("a_username"), _user, st.sampled_from(USERNAMES)),  # someone else renames, with events
    st.tuples(st.just("a_state"), _user, st.sampled_from(STATES)),
    st.tuples(st.just("a_create"), _user),
    st.tuples(st.just("a_delete"), _user),
    st.tuples(st.just("relay"), st.integers(1, 6)),
    st.tuples(st.just("lose"), st.integers(0, 5)),
    st.tuples(st.just("duplicate"), st.integers(0, 5)),
    st.tuples(st.just("reorder"), st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.just("fold")),
    st.tuples(st.just("sink"), st.integers(1, 8), st.booleans()),
    st.tuples(st.just("write")),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("refold"), st.integers(0, 1000)),
)


def run(model: Model, step: tuple) -> None:
    kind, *args = step
    if kind == "b_username":
        model.set_username("b", *args)
    elif kind == "b_state":
        model.set_state("b", *args)
    elif kind == "b_restricted":
        model.set_restricted("b", *args)
    elif kind in ("b_create", "a_create"):
        model.create(kind[0], *args)
    elif kind in ("b_delete", "a_delete"):
        model.delete(kind[0], *args)
    elif kind == "a_drift":
        model.drift(*args)
    elif kind == "a_username":
        model.set_username("a", *args)
    elif kind == "a_state":
        model.set_state("a", *args)
    elif kind == "relay":
        model.relay(args[0])
    elif kind == "lose":
        if args[0] < len(model.broker):
            del model.broker[args[0]]
    elif kind == "duplicate":
        if args[0] < len(model.broker):
            model.broker.insert(args[0], model.broker[args[0]])
    elif kind == "reorder":
        i, j = args
        if i < len(model.broker) and j < len(model.broker):
            model.broker[i], model.broker[j] = model.broker[j], model.broker[i]
    elif kind == "fold":
        model.fold_new()
    elif kind == "sink":
        model.sink(*args)
    elif kind == "write":
        model.write()
    elif kind == "reconcile":
        model.reconcile()
    elif kind == "restart":
        model.restart_from_scratch()
    elif kind == "refold":
        model.refold(args[0] % (model.folded + 1))


def patched_by_the_rule(b: dict[str, Final | None], a: dict[str, Final | None]) -> dict[str, Final | None]:
    """A after the seed's rule ran once over the final states (a PATCH moves Requested/Creating to OK)."""
    out = dict(a)
    for user, username in oracle_patches(b, a).items():
        now = a[user]
        assert now is not None
        out[user] = replace(now, username=username, state="OK" if now.state in ("Requested", "Creating") else now.state)
    return out


@settings(max_examples=1000, deadline=None)
@given(
    st.fixed_dictionaries({u: _final for u in USERS}),
    st.fixed_dictionaries({u: _final for u in USERS}),
    st.lists(_step, max_size=60),
)
def test_any_history_converges_to_the_existing_agents_rule(b0, a0, steps):
    model = Model(real={"b": dict(b0), "a": dict(a0)})
    for step in steps:
        run(model, step)
    note(f"broker {len(model.broker)}, topic {len(model.topic)}, folded {model.folded}, requests {len(model.requests)}")

    # The faults end; what was still queued is delivered, and one reconcile pass runs.
    model.settle()
    before = {site: dict(users) for site, users in model.real.items()}
    model.reconcile()
    model.settle()

    assert model.real["b"] == before["b"]  # usync never writes to B
    assert model.real["a"] == patched_by_the_rule(before["b"], before["a"])
    assert oracle_patches(model.real["b"], model.real["a"]) == {}

    # Converged: another pass sends zero PATCHes.
    patches = model.patches
    model.reconcile()
    model.settle()
    assert model.patches == patches


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({u: _final for u in USERS}), st.fixed_dictionaries({u: _final for u in USERS}))
def test_from_nothing_one_reconcile_pass_applies_the_rule(b0, a0):
    model = Model(real={"b": dict(b0), "a": dict(a0)})
    model.reconcile()
    model.settle()
    assert model.real["a"] == patched_by_the_rule(b0, a0)
    assert model.patches == len(oracle_patches(b0, a0))

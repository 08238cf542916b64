"""The stages against the in-memory adapters (streams.adapters.memory): no broker, no HTTP.

correct (verify, then at most one PATCH, one outcome), reconcile (every page of both
sides as SnapshotPage facts), lookups (identity-index misses as Lookup facts) and fold
(requests, then state, then lookups).
"""

from __future__ import annotations

import asyncio

import pytest

from streams.adapters.memory import FixedClock, MemoryEmit, MemoryFoldTables, MemoryLinkGroup, MemoryOfferingUsers
from streams.contract.config import DEFAULT_STATES, Endpoint, Link
from streams.contract.schema import CorrectionRequest, Lookup, Origin, OutcomeAction, SnapshotPage
from streams.core import LookupNeeded, Pending, SkipReason, compile_routes, index_key, row_key
from streams.errors import GaveUp
from streams.metrics import Metrics
from streams.stages.correct import Corrector
from streams.stages.dead_letter import DeadLetters
from streams.stages.fold import Fold, RequestCorrection
from streams.stages.lookups import ANSWER_TRAVELS, Lookups
from streams.stages.reconcile import Reconcile
from tests.unit.test_fold import B_TO_A, B_TO_C, OFF_A, OFF_B, OFF_C, OU_A, OU_B, event, on_a, on_b, page, record

OU_B2, OU_A2, OU_NEW = "3" * 32, "4" * 32, "5" * 32  # bob on B and A; an offering user the index lacks


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class World:
    """Sites b and a (alice: "alice_b" on B, "old" on A), both topics, a fixed clock."""

    def __init__(self, links=(B_TO_A,)) -> None:
        self.b = MemoryOfferingUsers("b", [record(OU_B, username="alice_b")])
        self.a = MemoryOfferingUsers("a", [record(OU_A, username="old", offering=OFF_A)])
        self.sites = {"b": self.b, "a": self.a}
        self.journal: list[tuple[str, bytes]] = []
        self.events = MemoryEmit("events", self.journal)
        self.outcomes = MemoryEmit("outcomes", self.journal)
        self.metrics = Metrics()
        self.clock = FixedClock()
        self.links = list(links)
        self.corrector = Corrector({link.name: link for link in self.links}, self.sites, self.metrics,
                                   self.events, self.outcomes, self.clock)

    def http_calls(self) -> int:
        return len(self.b.calls) + len(self.a.calls)


def request(user: str = "alice", a: str | None = OU_A, b: str | None = OU_B, link: str = "b-to-a",
            observed_at: int = 0, cause: str = "e1") -> CorrectionRequest:
    return CorrectionRequest(link=link, user_username=user, a_offering_user_uuid=a, b_offering_user_uuid=b,
                             desired="alice_b", cause_event_id=cause, observed_at=observed_at)


# -- correct ----------------------------------------------------------------------------


async def test_correct_reads_both_sides_live_patches_once_and_writes_the_facts_before_the_outcome():
    world = World()
    outcome = await world.corrector.handle(request())
    assert (outcome.action, outcome.desired, outcome.observed, outcome.http_status) == \
        (OutcomeAction.CORRECTED, "alice_b", "old", 200)
    assert (outcome.offering_user_uuid, outcome.cause_event_id, outcome.at) == (OU_A, "e1", world.clock.now())
    assert world.b.calls == [("get", OU_B)]
    assert world.a.calls == [("get", OU_A), ("patch", (OU_A, "alice_b"))]
    assert world.a.records[OU_A].username == "alice_b"
    facts = world.events.envelopes()
    assert all(f.origin is Origin.LOOKUP and isinstance(f.body, Lookup) and f.body.status == 200 for f in facts)
    assert sorted((f.site, f.body.offering_user_uuid, f.body.user.username) for f in facts) == \
        [("a", OU_A, "alice_b"), ("a", OU_A, "old"), ("b", OU_B, "alice_b")]
    assert sorted(world.events.keys()) == [f"a:{OFF_A}".encode()] * 2 + [f"b:{OFF_B}".encode()]
    assert [topic for topic, _ in world.journal] == ["events"] * 3 + ["outcomes"]
    assert world.outcomes.keys() == [b"b-to-a:alice"]
    assert world.outcomes.outcomes() == [outcome]
    assert sample(world.metrics, "usync_outcomes_total", link="b-to-a", action="corrected") == 1


async def test_correct_finds_a_side_by_user_when_the_request_has_no_uuid():
    world = World()
    outcome = await world.corrector.handle(request(a=None))
    assert outcome.action is OutcomeAction.CORRECTED
    assert world.a.calls == [("find", (OFF_A, "alice")), ("patch", (OU_A, "alice_b"))]


async def test_correct_does_not_patch_when_a_already_has_bs_username():
    world = World()
    world.a.put(record(OU_A, username="alice_b", offering=OFF_A))
    outcome = await world.corrector.handle(request())
    assert (outcome.action, outcome.observed) == (OutcomeAction.ALREADY_EQUAL, "alice_b")
    assert world.a.called("patch") == []
    assert len(world.events.records) == 2  # both reads, as facts


async def test_correct_skips_when_as_offering_user_is_gone():
    world = World()
    world.a.remove(OU_A)
    outcome = await world.corrector.handle(request())
    assert (outcome.action, outcome.reason) == (OutcomeAction.SKIPPED, SkipReason.A_MISSING.value)
    assert world.a.calls == [("get", OU_A), ("find", (OFF_A, "alice"))]
    gone = [f.body for f in world.events.envelopes() if f.site == "a"]
    assert [(g.offering_user_uuid, g.status, g.user) for g in gone] == [(OU_A, 404, None)]


async def test_a_rejected_patch_is_recorded_once_and_not_retried():
    world = World()
    world.a.refuse_patch(OU_A, status=400)
    outcome = await world.corrector.handle(request())
    assert (outcome.action, outcome.http_status, outcome.attempts) == (OutcomeAction.REJECTED, 400, 1)
    assert "400" in outcome.reason
    assert world.a.called("patch") == [(OU_A, "alice_b")]
    assert world.a.records[OU_A].username == "old"
    # not a verification: a later request about the same facts is verified again
    await world.corrector.handle(request(observed_at=world.clock.micros() - 1))
    assert len(world.a.called("patch")) == 2


async def test_a_request_older_than_a_later_live_verification_is_skipped_without_any_call():
    world = World()
    await world.corrector.handle(request(observed_at=world.clock.micros() - 5))
    calls = world.http_calls()
    outcome = await world.corrector.handle(request(observed_at=world.clock.micros() - 1))
    assert (outcome.action, outcome.reason) == (OutcomeAction.SKIPPED, "covered by a later live verification")
    assert world.http_calls() == calls
    # a fact observed at or after the verification started is read again
    again = await world.corrector.handle(request(observed_at=world.clock.micros()))
    assert again.action is OutcomeAction.ALREADY_EQUAL
    assert world.http_calls() == calls + 2


async def test_a_request_for_an_unknown_link_is_skipped_without_any_call():
    world = World()
    outcome = await world.corrector.handle(request(link="gone"))
    assert (outcome.action, outcome.reason, outcome.link) == (OutcomeAction.SKIPPED, "unknown link", "gone")
    assert world.http_calls() == 0 and world.events.records == []
    assert world.outcomes.keys() == [b"gone:alice"]


async def test_a_site_that_gives_up_makes_a_gave_up_outcome_with_its_attempts():
    world = World()
    world.a.fail(times=1, status=503, attempts=4)
    outcome = await world.corrector.handle(request())
    assert (outcome.action, outcome.http_status, outcome.attempts) == (OutcomeAction.GAVE_UP, 503, 4)
    assert outcome.reason.startswith("a:")
    assert world.a.called("patch") == []
    assert sample(world.metrics, "usync_outcomes_total", link="b-to-a", action="gave-up") == 1
    # the site is back: the same facts are verified again (a give-up is no verification)
    again = await world.corrector.handle(request(observed_at=world.clock.micros() - 1))
    assert again.action is OutcomeAction.CORRECTED


async def test_a_batch_verifies_each_link_and_user_once_with_the_latest_request():
    world = World()
    world.b.put(record(OU_B2, user="bob", username="bob_b"))
    world.a.put(record(OU_A2, user="bob", username="bob_b", offering=OFF_A))
    batch = [request(cause="e1"), request(cause="e2"), request(user="bob", a=OU_A2, b=OU_B2, cause="b1"),
             request(cause="e3")]
    outcomes = await world.corrector.handle_batch(batch)
    assert sorted((o.user_username, o.action, o.cause_event_id) for o in outcomes) == \
        [("alice", OutcomeAction.CORRECTED, "e3"), ("bob", OutcomeAction.ALREADY_EQUAL, "b1")]
    assert sorted(world.b.called("get")) == [OU_B, OU_B2]
    assert world.a.called("patch") == [(OU_A, "alice_b")]
    assert len(world.outcomes.records) == 2


# -- reconcile --------------------------------------------------------------------------


async def test_reconcile_lists_every_page_of_both_sides_and_skips_links_that_opt_out():
    quiet = Link(name="quiet", source=Endpoint("b", OFF_C), target=Endpoint("a", OFF_A), reconcile=False)
    b_users = [record(f"{i}" * 32, user=f"u{i}", username=f"n{i}") for i in range(1, 6)]
    b = MemoryOfferingUsers("b", b_users + [record("6" * 32, user="u6", state="Requested"),
                                            record("7" * 32, user="u7", offering=OFF_C)], page_size=2)
    a_users = [record(f"{i}" * 32, user=f"u{i}", state=state, offering=OFF_A)
               for i, state in zip("89ab", ["OK", "Creating", "Requested", "Deleted"])]
    a = MemoryOfferingUsers("a", a_users, page_size=2)
    events, metrics, clock = MemoryEmit("events"), Metrics(), FixedClock()
    reconcile = Reconcile([B_TO_A, quiet], {"b": b, "a": a}, metrics, events, interval=900.0, clock=clock)

    done = await reconcile.run_pass()

    assert done == {"b-to-a": 8}
    assert b.calls == [("list", (OFF_B, ("OK",), n)) for n in (1, 2, 3)]
    assert a.calls == [("list", (OFF_A, tuple(DEFAULT_STATES), n)) for n in (1, 2)]
    envelopes = events.envelopes()
    assert all(e.origin is Origin.SNAPSHOT and isinstance(e.body, SnapshotPage) for e in envelopes)
    assert events.keys() == [f"b:{OFF_B}".encode()] * 3 + [f"a:{OFF_A}".encode()] * 2
    b_pages, a_pages = [e.body for e in envelopes[:3]], [e.body for e in envelopes[3:]]
    assert [(p.page, p.last, p.total, p.states) for p in b_pages] == \
        [(1, False, 5, ["OK"]), (2, False, 5, ["OK"]), (3, True, 5, ["OK"])]
    assert [u.uuid for p in b_pages for u in p.users] == [u.uuid for u in b_users]
    assert [(p.page, p.last, p.total) for p in a_pages] == [(1, False, 3), (2, True, 3)]
    b_ids, a_ids = {p.snapshot_id for p in b_pages}, {p.snapshot_id for p in a_pages}
    assert len(b_ids) == len(a_ids) == 1 and b_ids != a_ids
    assert [e.event_id for e in envelopes[:3]] == [f"{b_pages[0].snapshot_id}:{n}" for n in (1, 2, 3)]
    assert all(e.received_at == clock.now() for e in envelopes)
    assert sample(metrics, "usync_snapshot_pages_total", link="b-to-a", site="b") == 3
    assert sample(metrics, "usync_reconcile_passes_total", result="ok") == 1


async def test_reconcile_lists_a_source_shared_by_several_links_once_per_pass():
    b = MemoryOfferingUsers("b", [record(OU_B, username="alice_b")])
    a = MemoryOfferingUsers("a", [record(OU_A, offering=OFF_A)])
    c = MemoryOfferingUsers("c", [record(OU_A2, offering=OFF_C)])
    to_a2 = Link(name="b-to-a-2", source=Endpoint("b", OFF_B.upper()), target=Endpoint("a", OFF_A))
    events = MemoryEmit("events")
    reconcile = Reconcile([B_TO_A, B_TO_C, to_a2], {"b": b, "a": a, "c": c}, Metrics(), events, interval=900.0,
                          clock=FixedClock())

    done = await reconcile.run_pass()

    assert b.calls == [("list", (OFF_B, ("OK",), 1))]  # once, for the three links that read it
    assert a.calls == [("list", (OFF_A, tuple(DEFAULT_STATES), 1))]  # a-side of two links, same states
    assert c.calls == [("list", (OFF_C, tuple(DEFAULT_STATES), 1))]
    assert done == {"b-to-a": 2, "b-to-c": 2, "b-to-a-2": 2}
    assert events.keys() == [f"b:{OFF_B}".encode(), f"a:{OFF_A}".encode(), f"c:{OFF_C}".encode()]
    assert len(await reconcile.run_pass()) == 3 and len(b.calls) == 2  # the next pass lists it again


async def test_a_reconcile_pass_a_site_gives_up_on_fails_and_is_counted():
    b, a = MemoryOfferingUsers("b"), MemoryOfferingUsers("a")
    a.fail(times=1)
    metrics = Metrics()
    reconcile = Reconcile([B_TO_A], {"b": b, "a": a}, metrics, MemoryEmit(), interval=900.0, clock=FixedClock())
    with pytest.raises(GaveUp):
        await reconcile.run_pass()
    assert sample(metrics, "usync_reconcile_passes_total", result="failed") == 1
    assert sample(metrics, "usync_reconcile_passes_total", result="ok") == 0


# -- lookups ----------------------------------------------------------------------------


def need(ou: str = OU_NEW) -> LookupNeeded:
    return LookupNeeded(site="b", offering_uuid=OFF_B, offering_user_uuid=ou, link="b-to-a", cause_event_id="e9")


def finder(site: MemoryOfferingUsers, state=None) -> tuple[Lookups, MemoryEmit, Metrics, FixedClock]:
    events, metrics, clock = MemoryEmit("events"), Metrics(), FixedClock()
    tables = MemoryFoldTables(state)
    return Lookups({"b": site}, events, metrics, lambda: tables.state, clock), events, metrics, clock


@pytest.mark.parametrize("present", [True, False])
async def test_a_lookup_writes_the_answer_as_a_fact(present):
    site = MemoryOfferingUsers("b", [record(OU_NEW, user="carol", username="c")] if present else [])
    lookups, events, metrics, clock = finder(site)
    await lookups.lookup(need())
    status = 200 if present else 404
    [fact] = events.envelopes()
    assert events.keys() == [f"b:{OFF_B}".encode()]
    assert (fact.site, fact.origin, fact.offering_uuid, fact.received_at) == ("b", Origin.LOOKUP, OFF_B, clock.now())
    assert (fact.body.offering_user_uuid, fact.body.status) == (OU_NEW, status)
    assert (fact.body.user.user_username if fact.body.user else None) == ("carol" if present else None)
    assert site.calls == [("get", OU_NEW)]
    assert sample(metrics, "usync_lookups_total", site="b", status=str(status)) == 1


async def test_a_lookup_that_gives_up_writes_nothing_and_is_counted():
    site = MemoryOfferingUsers("b", [record(OU_NEW, user="carol")])
    site.fail(times=1)
    lookups, events, metrics, _ = finder(site)
    await lookups.lookup(need())
    assert events.records == []
    assert sample(metrics, "usync_lookups_total", site="b", status="gave-up") == 1


async def test_start_runs_one_lookup_per_offering_user_in_flight_or_whose_answer_travels():
    site = MemoryOfferingUsers("b", [record(OU_NEW, user="carol")])
    lookups, events, metrics, _ = finder(site)
    site.hold()
    lookups.start([need()])
    await asyncio.wait_for(site.reached.wait(), 5)  # the first GET is under way
    lookups.start([need(), need()])
    assert list(lookups.in_flight) == [("b", OU_NEW)]
    lookups.start([need(OU_B)])
    assert len(lookups.in_flight) == 2
    site.release()
    await asyncio.gather(*lookups.in_flight.values())
    assert lookups.in_flight == {}
    assert sorted(site.called("get")) == sorted([OU_NEW, OU_B])
    assert len(events.records) == 2
    lookups.start([need()])  # answered, and the answer is on its way to the parked events
    assert lookups.in_flight == {} and site.called("get").count(OU_NEW) == 1
    assert sample(metrics, "usync_lookups_total", site="b", status="answer-travelling") == 1
    lookups.answered[("b", OU_NEW)] -= ANSWER_TRAVELS + 1  # as if the answer was written 6 s ago
    lookups.start([need()])  # the answer had time to arrive: a miss now asks again
    await asyncio.gather(*lookups.in_flight.values())
    assert site.called("get").count(OU_NEW) == 2


async def test_retry_pending_asks_again_for_every_parked_event():
    site = MemoryOfferingUsers("b", [record(OU_NEW, user="carol")])
    tables = MemoryFoldTables()
    key = index_key("b-to-a", "source", OU_NEW)
    tables.state.pending[key] = Pending(link="b-to-a", side="source", site="b", offering_uuid=OFF_B,
                                        offering_user_uuid=OU_NEW, event_id="e7")
    events = MemoryEmit()
    lookups = Lookups({"b": site}, events, Metrics(), lambda: tables.state, FixedClock())
    await lookups.retry_pending()
    await asyncio.gather(*lookups.in_flight.values())
    assert site.calls == [("get", OU_NEW)]
    [fact] = events.envelopes()
    assert (fact.offering_uuid, fact.body.offering_user_uuid, fact.body.status) == (OFF_B, OU_NEW, 200)


# -- fold -------------------------------------------------------------------------------


class FoldWorld:
    def __init__(self, links=(B_TO_A,)) -> None:
        self.routes = compile_routes(list(links))
        self.tables = MemoryFoldTables()
        self.b = MemoryOfferingUsers("b", [record(OU_NEW, user="carol", username="c")])
        self.corrections = MemoryEmit("corrections")
        self.events = MemoryEmit("events")
        self.metrics = Metrics()
        self.written_when_requested: list[int] = []
        self.lookups = Lookups({"b": self.b}, self.events, self.metrics, lambda: self.tables.state, FixedClock())
        self.dlq = MemoryEmit("dlq")
        self.fold = Fold(self.routes, self.tables, RequestCorrection(self.emit_request, self.metrics, self.routes),
                         self.lookups, self.metrics, DeadLetters(self.dlq, self.metrics))

    async def emit_request(self, key: bytes, value: bytes) -> None:
        self.written_when_requested.append(len(self.tables.written))
        await self.corrections(key, value)


async def test_fold_batch_requests_a_correction_writes_the_changes_then_looks_up_misses():
    world = FoldWorld()
    group = MemoryLinkGroup.of(
        "b-to-a",
        on_b(page(record(OU_B, username="alice_b")), "snap-b"),
        on_a(page(record(OU_A, username="old", offering=OFF_A), offering=OFF_A), "snap-a"),
        on_b(event("update", OU_NEW, username="c2", state="OK"), "u1"),  # nobody knows OU_NEW yet
    )
    await world.fold.fold_batch([group])

    [sent] = world.corrections.requests()
    assert world.corrections.keys() == [f"b:{OFF_B}:alice".encode()]  # keyed by the source: see correction_key
    assert (sent.link, sent.user_username, sent.desired) == ("b-to-a", "alice", "alice_b")
    assert (sent.a_offering_user_uuid, sent.b_offering_user_uuid, sent.cause_event_id) == (OU_A, OU_B, "snap-b")
    assert sent.observed_at == int(group_time() * 1_000_000)
    assert world.written_when_requested == [0]  # acknowledged before any state was written
    [(link, changes)] = world.tables.written
    assert link == "b-to-a" and world.tables.entered == ["b-to-a", "b-to-a"]
    assert changes["rows"] == {row_key("b-to-a", "alice"): world.tables.state.rows[row_key("b-to-a", "alice")]}
    assert set(changes["index"]) == {index_key("b-to-a", "source", OU_B), index_key("b-to-a", "target", OU_A)}
    assert set(changes["pending"]) == {index_key("b-to-a", "source", OU_NEW)}
    assert sample(world.metrics, "usync_events_folded_total", link="b-to-a") == 3
    assert sample(world.metrics, "usync_corrections_requested_total", link="b-to-a") == 1

    assert list(world.lookups.in_flight) == [("b", OU_NEW)]
    await asyncio.gather(*world.lookups.in_flight.values())
    assert world.b.calls == [("get", OU_NEW)]
    [fact] = world.events.envelopes()
    assert (fact.body.offering_user_uuid, fact.body.status) == (OU_NEW, 200)


def group_time() -> float:
    return on_b(page()).received_at.timestamp()


async def test_fold_batch_writes_each_links_changes_and_requests_nothing_for_agreeing_rows():
    world = FoldWorld(links=(B_TO_A, B_TO_C))
    snap_b = on_b(page(record(OU_B, username="alice_b")), "snap-b")
    snap_a = on_a(page(record(OU_A, username="alice_b", offering=OFF_A), offering=OFF_A), "snap-a")
    await world.fold.fold_batch([MemoryLinkGroup.of("b-to-a", snap_b, snap_a), MemoryLinkGroup.of("b-to-c", snap_b)])
    assert world.corrections.records == []
    assert [link for link, _ in world.tables.written] == ["b-to-a", "b-to-c"]
    by_link = dict(world.tables.written)
    assert set(by_link["b-to-a"]["rows"]) == {row_key("b-to-a", "alice")}
    assert set(by_link["b-to-c"]["rows"]) == {row_key("b-to-c", "alice")}
    assert world.lookups.in_flight == {}

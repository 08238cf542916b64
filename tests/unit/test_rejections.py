"""A username A refuses (issue 19): one rejected outcome with A's answer, a Rejection fact
the fold marks the row with, and no further attempt until B's or A's username changes
or the retry window (doubling) passes. The correct stage, the fold and the re-raise
timer against the in-memory adapters; the worker over Kafka is tests/app/test_rejections.py."""

from __future__ import annotations

from msgspec.structs import replace

from streams.adapters.memory import FixedClock
from streams.contract.schema import Envelope, Origin, OutcomeAction, Rejection, json_schemas, outcome_decoder
from streams.core import (
    RetryWindow,
    as_dict,
    drift,
    empty_state,
    fold_many,
    needing_correction,
    refused,
    rejected,
    row_key,
)
from streams.stages.reraise import Reraiser
from tests.unit.test_fold import B_TO_A, OFF_A, OFF_B, OU_A, OU_B, alice, event, known_alice
from tests.unit.test_stages import World, request

RESERVED = '{"username": ["This username is reserved and cannot be used."]}'
KEY = row_key("b-to-a", "alice")
HOUR = 3600.0
NOW = FixedClock().now()


class Refusing(World):
    """World (alice: "alice_b" on B, "old" on A) where A refuses "alice_b"; the table folds
    every fact the correct stage writes, as the worker's fold does."""

    def __init__(self) -> None:
        super().__init__()
        self.a.refuse_patch(OU_A, 400, RESERVED)
        self.state = known_alice()
        self.folded = 0
        self.raised: list[str] = []
        self.reraiser = Reraiser([B_TO_A], lambda: self.state, self._raise, self.clock, RetryWindow(HOUR, 4 * HOUR))

    async def _raise(self, row) -> None:
        self.raised.append(row.user_username)

    def fold_new_facts(self) -> None:
        envelopes = self.events.envelopes()
        fold_many(self.state, [B_TO_A], envelopes[self.folded:])
        self.folded = len(envelopes)

    async def correct(self):
        outcome = await self.corrector.handle(request())
        self.fold_new_facts()
        return outcome

    def on_b_now(self, body) -> Envelope:
        return Envelope(event_id="b-change", site="b", origin=Origin.STOMP, offering_uuid=OFF_B,
                        received_at=self.clock.now(), body=body)


async def test_a_refusal_is_one_rejected_outcome_with_as_answer_and_a_fact_that_marks_the_row():
    world = Refusing()
    outcome = await world.correct()
    assert (outcome.action, outcome.http_status, outcome.response) == (OutcomeAction.REJECTED, 400, RESERVED)
    [written] = world.outcomes.outcomes()
    assert written.response == RESERVED
    [fact] = [e for e in world.events.envelopes() if isinstance(e.body, Rejection)]
    assert (fact.site, fact.offering_uuid, fact.origin) == ("a", OFF_A, Origin.REJECTION)
    assert (fact.body.desired, fact.body.observed, fact.body.status) == ("alice_b", "old", 400)
    row = alice(world.state)
    assert (row.rejected_desired, row.rejected_observed, row.rejected_count) == ("alice_b", "old", 1)
    assert refused(row)
    # counted as rejected, not as drift; a reconcile restating the row asks nothing
    assert drift(world.state, B_TO_A) == [] and rejected(world.state, B_TO_A) == [row]
    assert needing_correction(world.state, [B_TO_A], [KEY]) == []


async def test_the_timer_leaves_a_refused_row_alone_until_its_window_passes_and_the_window_doubles():
    world = Refusing()
    await world.correct()
    for _ in range(59):  # a scan a minute for the hour: without the mark, each raised it again
        world.clock.advance(60)
        assert await world.reraiser.scan() == 0
    world.clock.advance(61)
    assert await world.reraiser.scan() == 1 and world.raised == ["alice"]
    await world.correct()  # refused again: the window doubles
    assert alice(world.state).rejected_count == 2
    world.clock.advance(2 * HOUR - 60)
    assert await world.reraiser.scan() == 0
    world.clock.advance(61)
    assert await world.reraiser.scan() == 1
    assert len(world.a.called("patch")) == 2
    assert RetryWindow(HOUR, 4 * HOUR).seconds(5) == 4 * HOUR  # capped


async def test_a_change_of_bs_username_lifts_the_mark_and_the_row_is_corrected():
    world = Refusing()
    await world.correct()
    world.clock.advance(10)
    world.b.put(replace(world.b.records[OU_B], username="alice_2"))
    fold_many(world.state, [B_TO_A], [world.on_b_now(event("update", username="alice_2", state="OK"))])
    assert not refused(alice(world.state))
    assert needing_correction(world.state, [B_TO_A], [KEY]) == [alice(world.state)]
    assert [r.user_username for r in drift(world.state, B_TO_A)] == ["alice"]
    world.a.refused.clear()  # A takes the new name (the memory site refuses by uuid)
    outcome = await world.corrector.handle(request())
    assert (outcome.action, world.a.records[OU_A].username) == (OutcomeAction.CORRECTED, "alice_2")


async def test_a_change_of_as_username_lifts_the_mark():
    world = Refusing()
    await world.correct()
    world.clock.advance(10)
    changed = Envelope(event_id="a-change", site="a", origin=Origin.STOMP, offering_uuid=OFF_A,
                       received_at=world.clock.now(), body=event("update", ou=OU_A, username="other", state="OK"))
    fold_many(world.state, [B_TO_A], [changed])
    assert not refused(alice(world.state)) and needing_correction(world.state, [B_TO_A], [KEY]) != []


async def test_replaying_the_facts_rebuilds_the_mark_and_a_redelivered_rejection_counts_once():
    world = Refusing()
    await world.correct()
    world.clock.advance(HOUR + 60)
    await world.correct()
    history = world.events.envelopes()
    replayed = known_alice()
    fold_many(replayed, [B_TO_A], history)
    assert as_dict(replayed) == as_dict(world.state)
    fold_many(replayed, [B_TO_A], history)  # at-least-once: the same stretch again
    assert as_dict(replayed) == as_dict(world.state) and alice(replayed).rejected_count == 2


def test_a_rejection_of_another_link_or_side_is_ignored():
    state = known_alice()
    other = Rejection(link="b-to-c", user_username="alice", offering_user_uuid=OU_A, desired="alice_b",
                      observed="old", status=400)
    on_b = Rejection(link="b-to-a", user_username="alice", offering_user_uuid=OU_B, desired="alice_b",
                     observed="old", status=400)
    before = as_dict(state)
    fold_many(state, [B_TO_A], [
        Envelope(event_id="r1", site="a", origin=Origin.REJECTION, offering_uuid=OFF_A,
                 received_at=NOW, body=other),
        Envelope(event_id="r2", site="b", origin=Origin.REJECTION, offering_uuid=OFF_B,
                 received_at=NOW, body=on_b),
    ])
    assert as_dict(state) == before


def test_the_outcome_schema_stays_backwards_compatible():
    old = b'{"schema_version":1,"link":"l","user_username":"u","action":"rejected","desired":"x","observed":"y",' \
          b'"http_status":400,"reason":"PATCH answered HTTP 400","at":"2026-01-01T00:00:00Z"}'
    assert outcome_decoder.decode(old).response is None
    schema = json_schemas()["outcomes"]
    outcome = schema["$defs"]["Outcome"]
    assert "response" in outcome["properties"] and "response" not in outcome["required"]
    assert "Rejection" in json_schemas()["events"]["$defs"]

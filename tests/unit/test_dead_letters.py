"""Poison records go to the DLQ and the stage moves on (streams.stages.dead_letter), at the ports.

fold (a by-link record that is not a list of envelopes, one bad envelope among good ones),
route (an undecodable envelope on the events topic), correct loop (an undecodable request,
a request whose handling raises, and a transient failure that is retried, never
dead-lettered). The real-Kafka acceptance tests are tests/app/test_poison_records.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.adapters.memory import MemoryEmit, MemoryLinkGroup, MemoryOfferingUsers
from streams.contract.schema import OutcomeAction, dead_letter_decoder, envelope_encoder, request_encoder
from streams.core import compile_routes, row_key
from streams.errors import SiteUnavailable
from streams.metrics import Metrics
from streams.stages.correct import Corrector
from streams.stages.correct_loop import CorrectLoop
from streams.stages.dead_letter import DeadLetters
from streams.stages.route import Route
from tests.unit.test_fold import B_TO_A, OFF_A, OU_A, OU_B, event, on_a, on_b, page, record
from tests.unit.test_stages import FoldWorld, World, request, sample


@dataclass
class Rec:
    """A consumed record (``streams.ports.Record``)."""

    value: bytes
    offset: int
    topic: str = "t"
    partition: int = 2


def letters(dlq: MemoryEmit) -> list:
    return [dead_letter_decoder.decode(value) for _, value in dlq.records]


async def test_a_by_link_record_that_does_not_decode_is_dead_lettered_and_the_rest_folds():
    world = FoldWorld()
    good = envelope_encoder.encode(on_b(page(record(OU_B, username="alice_b")), "snap-b"))
    bad_envelope = b'{"site": "b"}'
    group = MemoryLinkGroup("b-to-a", [b"not a list", b"[" + bad_envelope + b"," + good + b"]"],
                            [("app-by-link", 1, 7), ("app-by-link", 1, 8)])
    await world.fold.fold_batch([group])
    first, second = letters(world.dlq)
    assert (first.topic, first.partition, first.offset, first.raw) == ("app-by-link", 1, 7, b"not a list")
    assert first.reason.startswith("undecodable: not a list of envelopes")
    assert (second.offset, second.raw) == (8, bad_envelope) and second.reason.startswith("undecodable: envelope")
    assert world.tables.state.rows[row_key("b-to-a", "alice")].b_username == "alice_b"  # the good one folded
    assert sample(world.metrics, "usync_dead_lettered_total", topic="app-by-link", reason_class="undecodable") == 2


async def test_route_dead_letters_an_undecodable_envelope_and_routes_the_rest():
    metrics, by_link, dlq = Metrics(), MemoryEmit("by-link"), MemoryEmit("dlq")
    dead = DeadLetters(dlq, metrics)
    good = envelope_encoder.encode(on_b(event("update", OU_B, username="x"), "e1"))
    await Route(compile_routes([B_TO_A]), metrics, by_link.all, dead).handle(
        [Rec(good, 0, "events"), Rec(b"\xff garbage", 1, "events"), Rec(None, 2, "events")])  # type: ignore[arg-type]
    assert [(d.topic, d.offset, d.raw) for d in letters(dlq)] == [("events", 1, b"\xff garbage"), ("events", 2, b"")]
    assert by_link.keys() == [b"b-to-a"]
    assert sample(metrics, "usync_events_unrouted_total") == 0
    assert dead.count == 2 and dead.degraded()


class BrokenA(MemoryOfferingUsers):
    """A site whose answer for one uuid does not decode (the HTTP adapter raises msgspec's error)."""

    def __init__(self, *args, broken: str, transient: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.broken, self.transient = broken, transient

    async def get_offering_user(self, uuid: str):
        if self.transient:
            self.transient -= 1
            raise SiteUnavailable(self.name, 503, "HTTP 503")
        if uuid == self.broken:
            raise ValueError("Expected `str`, got `null` - at `$.user_username`")
        return await super().get_offering_user(uuid)


def loop_world(transient: int = 0) -> tuple[World, CorrectLoop, MemoryEmit]:
    world = World()
    world.a = BrokenA("a", [record(OU_A, username="old", offering=OFF_A), record("4" * 32, user="bob", username="x", offering=OFF_A)],
                      broken="4" * 32, transient=transient)
    world.b.put(record("3" * 32, user="bob", username="bob_b"))
    world.sites["a"] = world.a
    world.corrector = Corrector({B_TO_A.name: B_TO_A}, world.sites, world.metrics, world.events, world.outcomes, world.clock)
    dlq = MemoryEmit("dlq")
    return world, CorrectLoop(world.corrector, DeadLetters(dlq, world.metrics)), dlq


async def test_a_correction_that_raises_is_dead_lettered_with_an_outcome_and_the_others_are_corrected():
    world, loop, dlq = loop_world()
    bob = request_encoder.encode(request(user="bob", a="4" * 32, b="3" * 32))
    await loop.handle([Rec(b"{", 0, "corr"), Rec(bob, 1, "corr"), Rec(request_encoder.encode(request()), 2, "corr")])
    garbage, raised = letters(dlq)
    assert (garbage.offset, garbage.raw) == (0, b"{") and garbage.reason.startswith("undecodable: correction request")
    assert (raised.offset, raised.raw) == (1, bob) and raised.reason.startswith("handler-error: ValueError")
    by_user = {o.user_username: o for o in world.outcomes.outcomes()}
    assert by_user["alice"].action is OutcomeAction.CORRECTED
    assert by_user["bob"].action is OutcomeAction.DEAD_LETTERED and "ValueError" in by_user["bob"].reason
    assert sample(world.metrics, "usync_outcomes_total", link="b-to-a", action="dead-lettered") == 1
    assert sample(world.metrics, "usync_dead_lettered_total", topic="corr", reason_class="handler-error") == 1


async def test_a_transient_failure_is_retried_never_dead_lettered():
    world, loop, dlq = loop_world(transient=2)
    await loop.handle([Rec(request_encoder.encode(request()), 0, "corr")])
    assert dlq.records == []
    [outcome] = world.outcomes.outcomes()
    assert outcome.action is OutcomeAction.CORRECTED

"""Bulkheads at the ports: the correct stage's per-site lanes (streams.stages.correct_loop)
and the contiguous-prefix commits of its consumer (streams.adapters.kafka.consumer.Offsets).
The real-Kafka acceptance test is tests/app/test_federation.py (a target site down)."""

from __future__ import annotations

import asyncio

from streams.adapters.kafka.consumer import Offsets, done_metadata, done_offsets
from streams.adapters.memory import MemoryEmit, MemoryOfferingUsers
from streams.contract.schema import OutcomeAction, request_encoder
from streams.stages.correct_loop import CorrectLoop
from streams.stages.dead_letter import DeadLetters
from tests.unit.test_dead_letters import Rec
from tests.unit.test_fold import B_TO_A, B_TO_C, OFF_A, OFF_C, OU_A, record
from tests.unit.test_stages import World, request

OU_C = "6" * 32


class HeldSite(MemoryOfferingUsers):
    """A site whose reads wait until ``release`` is set (a site slow or down), counting them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()
        self.waiting = 0

    async def get_offering_user(self, uuid: str):
        self.waiting += 1
        await self.release.wait()
        return await super().get_offering_user(uuid)


def lanes_world(concurrency: int = 2) -> tuple[World, CorrectLoop]:
    world = World(links=(B_TO_A, B_TO_C))
    world.a = HeldSite("a", [record(OU_A, username="old", offering=OFF_A)])
    world.sites["a"] = world.a
    world.sites["c"] = MemoryOfferingUsers("c", [record(OU_C, username="old", offering=OFF_C)])
    world.corrector.sites = world.sites
    return world, CorrectLoop(world.corrector, DeadLetters(MemoryEmit("dlq"), world.metrics), concurrency=concurrency)


async def _until_empty(loop: CorrectLoop) -> None:
    while loop.queued():
        await asyncio.sleep(0.01)


def rec(req, offset: int) -> Rec:
    return Rec(request_encoder.encode(req), offset, "corr")


async def test_a_held_site_delays_only_its_own_lane():
    world, loop = lanes_world(concurrency=2)
    to_a = [loop.dispatch(rec(request(user=f"u{i}"), i)) for i in range(5)]
    to_c = loop.dispatch(rec(request(link="b-to-c", a=OU_C), 5))
    await asyncio.wait_for(to_c, 2)  # C's correction is done while A's are held
    [outcome] = world.outcomes.outcomes()
    assert (outcome.link, outcome.action) == ("b-to-c", OutcomeAction.CORRECTED)
    assert not any(f.done() for f in to_a)
    assert world.a.waiting == 2  # at most `concurrency` of A's under way: the rest wait in A's lane
    assert loop.queued() == {"a": 5}
    world.a.release.set()
    await asyncio.wait_for(asyncio.gather(*to_a), 2)
    assert loop.queued() == {}


async def test_a_lane_keeps_one_request_per_user_waiting_and_cancel_drops_everything():
    world, loop = lanes_world(concurrency=1)
    first = loop.dispatch(rec(request(user="x"), 0))  # under way, held
    queued = [loop.dispatch(rec(request(cause=f"e{i}"), i)) for i in (1, 2, 3)]  # alice, coalesced: one waits
    assert loop.queued() == {"a": 2}
    loop.cancel()
    assert first.cancelled() and all(f.cancelled() for f in queued)
    await asyncio.wait_for(_until_empty(loop), 2)  # the cancelled task leaves the lane once it has stopped


def test_offsets_commit_only_the_contiguous_done_prefix_per_partition():
    offsets = Offsets()
    for offset in range(5):
        offsets.started("p0", offset)
    offsets.started("p1", 7)
    offsets.finished("p0", 1)
    offsets.finished("p0", 2)
    offsets.finished("p1", 7)
    assert offsets.committable() == {"p1": 8}  # p0 waits for offset 0
    assert (offsets.count, offsets.undone) == (5, 3)
    offsets.finished("p0", 0)
    assert offsets.committable() == {"p0": 3}
    offsets.finished("p0", 4)
    assert offsets.committable() == {}
    offsets.finished("p0", 3)
    assert offsets.committable() == {"p0": 5}
    assert (offsets.count, offsets.undone) == (0, 0)
    offsets.clear()
    offsets.finished("p0", 9)  # done after a rebalance cleared it: forgotten
    assert offsets.committable() == {} and offsets.undone == 0


def test_a_commit_names_the_records_done_above_its_offset_and_a_next_owner_reads_them_back():
    offsets = Offsets()
    for offset in range(100, 110):
        offsets.started("p0", offset)
    for offset in (101, 102, 103, 105, 109):
        offsets.finished("p0", offset)
    [(tp, (offset, metadata))] = offsets.commits().items()
    assert (tp, offset, metadata) == ("p0", 100, "usync-done:1:1-3,5,9")
    assert done_offsets(metadata, offset) == {101, 102, 103, 105, 109}
    assert offsets.commits() == {}  # nothing new: no commit
    offsets.finished("p0", 100)
    assert offsets.commits() == {"p0": (104, "usync-done:1:1,5")}
    offsets.abandoned("p0", 104)  # dropped by a revocation: no longer awaited, never done
    assert offsets.undone == 3 and offsets.commits() == {}


def test_commit_metadata_keeps_the_lowest_ranges_that_fit_and_ignores_what_is_not_its_own():
    done = list(range(1, 20_000, 2))  # nothing contiguous: the worst case
    metadata = done_metadata(0, done, limit=200)
    assert len(metadata) <= 200
    kept = done_offsets(metadata, 0)
    assert kept and kept == set(done[:len(kept)])
    assert done_offsets("", 5) == set() and done_offsets("someone else's", 5) == set()
    assert done_offsets("usync-done:1:x-y", 5) == set()
    assert done_metadata(7, []) == ""


async def test_shedding_drops_what_waits_unstarted_and_leaves_what_is_under_way():
    world, loop = lanes_world(concurrency=1)
    under_way = loop.dispatch(rec(request(user="x"), 0))
    waiting = [loop.dispatch(rec(request(user=f"w{i}"), i + 1)) for i in range(3)]
    loop.shed()
    assert all(f.cancelled() for f in waiting) and not under_way.done()
    world.a.release.set()
    await asyncio.wait_for(under_way, 2)
    assert [o.user_username for o in world.outcomes.outcomes()] == ["x"]


async def test_a_lane_tells_how_much_work_its_site_has_as_it_comes_and_goes():
    """The worker's demand for a site's budget (streams.adapters.kafka.budget)."""
    world, _ = lanes_world()
    demand: dict[str, int] = {"a": 0, "c": 0}

    def told(site: str, delta: int) -> None:
        demand[site] += delta
        assert demand[site] >= 0

    loop = CorrectLoop(world.corrector, DeadLetters(MemoryEmit("dlq"), world.metrics), concurrency=1, busy=told)
    to_a = [loop.dispatch(rec(request(user=f"u{i}"), i)) for i in range(3)]
    loop.dispatch(rec(request(user="u1", cause="again"), 3))  # coalesced with u1's queued one: no more work
    assert demand == {"a": 3, "c": 0}
    await asyncio.wait_for(loop.dispatch(rec(request(link="b-to-c", a=OU_C), 4)), 2)
    assert demand == {"a": 3, "c": 0}
    world.a.release.set()
    await asyncio.wait_for(asyncio.gather(*to_a), 2)
    assert demand == {"a": 0, "c": 0}
    loop.dispatch(rec(request(user="u9"), 5))
    loop.cancel()
    await asyncio.wait_for(_until_empty(loop), 2)
    assert demand == {"a": 0, "c": 0}

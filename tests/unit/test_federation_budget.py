"""Federation scale, without brokers: one API budget per site across workers (the token
bucket's share), and one live read of a source shared by every link it feeds."""

from __future__ import annotations

import asyncio
import time

from streams.adapters.memory import FixedClock, MemoryEmit, MemoryOfferingUsers
import httpx

from streams.adapters.budget import TokenBucket, registration_bucket
from streams.adapters.kafka.budget import BudgetExchange
from streams.adapters.probe import SiteBack
from streams.adapters.waldur import Clients
from streams.contract.config import BRIDGES_PER_SITE, Endpoint, Link, parse_config
from streams.contract.schema import CorrectionRequest, OutcomeAction
from streams.metrics import Metrics
from streams.stages.correct import Corrector
from streams.stages.fold import correction_key
from streams.core import Row, compile_routes
from tests.unit.test_fold import B_TO_A, B_TO_C, OFF_A, OFF_B, OFF_C, OU_A, OU_B, record

OU_C = "6" * 32
B_TO_D = Link(name="b-to-d", source=Endpoint("b", OFF_B), target=Endpoint("d", "d" * 32))


async def _acquired_within(bucket: TokenBucket, seconds: float) -> int:
    count = 0

    async def take() -> None:
        nonlocal count
        while True:
            await bucket.acquire()
            count += 1

    task = asyncio.create_task(take())
    await asyncio.sleep(seconds)  # the measured window itself, not a synchronisation
    task.cancel()
    return count


async def test_three_shares_of_a_bucket_add_up_to_its_rate():
    buckets = [TokenBucket(rate=50, burst=5) for _ in range(3)]
    for bucket, owned in zip(buckets, (3, 3, 2)):
        bucket.set_share(owned / 8)
    counts = await asyncio.gather(*(_acquired_within(b, 1.0) for b in buckets))
    # the three together: the full rate over the second plus the three shares' bursts (>= 1 token each)
    assert sum(counts) <= 50 + 5 + 3
    assert sum(counts) >= 35  # and the budget is really used
    assert counts[0] > counts[2]  # a larger share sends more


async def test_no_share_sends_nothing_until_one_is_given():
    bucket = TokenBucket(rate=100, burst=10)
    bucket.set_share(0.0)
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    bucket.set_share(0.5)
    await asyncio.wait_for(waiter, 1.0)
    assert bucket.burst == 5.0 and bucket.rate == 50.0


def test_a_small_share_of_a_small_burst_still_banks_one_token():
    bucket = TokenBucket(rate=20, burst=2)
    bucket.set_share(1 / 8)
    assert bucket.burst == 1.0 and bucket.rate == 2.5


def test_requests_of_every_link_of_one_source_share_a_key():
    routes = compile_routes([B_TO_A, B_TO_C, B_TO_D])
    keys = {correction_key(Row(link=link.name, user_username="alice"), routes) for link in (B_TO_A, B_TO_C, B_TO_D)}
    assert keys == {f"b:{OFF_B}:alice".encode()}
    assert correction_key(Row(link="b-to-a", user_username="bob"), routes) != keys.pop()


class FanOut:
    """B feeds a, c and d; alice is "alice_b" on B and "old" on each target."""

    def __init__(self) -> None:
        self.b = MemoryOfferingUsers("b", [record(OU_B, username="alice_b")])
        self.targets = {
            "a": MemoryOfferingUsers("a", [record(OU_A, username="old", offering=OFF_A)]),
            "c": MemoryOfferingUsers("c", [record(OU_C, username="old", offering=OFF_C)]),
            "d": MemoryOfferingUsers("d", [record("7" * 32, username="old", offering="d" * 32)]),
        }
        self.clock = FixedClock()
        journal: list = []
        self.metrics = Metrics()
        links = {link.name: link for link in (B_TO_A, B_TO_C, B_TO_D)}
        self.corrector = Corrector(links, {"b": self.b, **self.targets}, self.metrics, MemoryEmit("events", journal),
                                   MemoryEmit("outcomes", journal), self.clock)

    def requests(self, observed_at: int) -> list[CorrectionRequest]:
        uuids = {"b-to-a": OU_A, "b-to-c": OU_C, "b-to-d": "7" * 32}
        return [CorrectionRequest(link=link, user_username="alice", a_offering_user_uuid=uuid, b_offering_user_uuid=OU_B,
                                  desired="alice_b", observed_at=observed_at) for link, uuid in uuids.items()]


async def test_one_change_on_a_source_is_read_once_for_all_its_links():
    world = FanOut()
    outcomes = await world.corrector.handle_batch(world.requests(observed_at=world.clock.micros() - 10))
    assert [o.action for o in outcomes] == [OutcomeAction.CORRECTED] * 3
    assert world.b.calls == [("get", OU_B)]  # one read of B for three links
    assert all(len(t.called("patch")) == 1 for t in world.targets.values())  # each target read live and PATCHed
    assert all(t.calls[0][0] == "get" for t in world.targets.values())
    assert world.metrics.registry.get_sample_value("usync_source_reads_shared_total", {"site": "b"}) == 2


async def test_a_read_sent_before_the_newest_fact_is_not_reused():
    world = FanOut()
    first = world.requests(observed_at=world.clock.micros() - 10)[0]
    await world.corrector.handle(first)
    world.clock.advance(0.000_02)  # a newer fact on B, observed after that read was sent
    later = world.requests(observed_at=world.clock.micros() - 5)[1]
    await world.corrector.handle(later)
    assert world.b.calls == [("get", OU_B), ("get", OU_B)]


async def test_a_read_older_than_the_reuse_window_is_not_reused():
    world = FanOut()
    sent = world.clock.micros()
    await world.corrector.handle(world.requests(observed_at=sent - 10)[0])
    world.clock.advance(6.0)
    await world.corrector.handle(world.requests(observed_at=sent - 10)[1])
    assert len(world.b.calls) == 2


async def test_a_request_carrying_a_recent_live_read_of_b_does_not_read_b_again():
    world = FanOut()
    now = world.clock.micros()
    [fresh, stale, after_a] = world.requests(observed_at=now - 1_000)
    fresh.b_read_at = now - 1_000  # an identity lookup of B a millisecond ago: the newest fact of the row
    outcome = await world.corrector.handle(fresh)
    assert outcome.action is OutcomeAction.CORRECTED and world.b.calls == []
    stale.b_read_at, stale.observed_at = now - 6_000_000, now - 6_000_000  # too old to stand for a live read
    await world.corrector.handle(stale)
    assert world.b.calls == [("get", OU_B)]
    other = FanOut()  # (no read of B under way to share)
    after_a.b_read_at = now - 1_000  # a fresh read of B, but A changed after it: B is read again
    after_a.observed_at = now - 500
    await other.corrector.handle(after_a)
    assert other.b.calls == [("get", OU_B)]


def test_b_read_at_is_the_newest_read_of_b_and_an_event_clears_it():
    from streams.core import TableState, fold_many, row_key
    from tests.unit.test_fold import event, on_b, page

    state = TableState()
    snapshot = on_b(page(record(OU_B, username="alice_b")), "snap")
    fold_many(state, [B_TO_A], [snapshot])
    row = state.rows[row_key("b-to-a", "alice")]
    assert row.b_read_at == row.b_observed_at > 0
    later = on_b(event("update", OU_B, username="alice_c", state="OK"), "u1")
    later.received_at = later.received_at.replace(year=2027)
    fold_many(state, [B_TO_A], [later])
    assert state.rows[row_key("b-to-a", "alice")].b_read_at == 0


async def test_the_workers_share_of_a_registering_site_leaves_the_bridges_their_part():
    from tests.unit.test_config import ENV, GOOD  # site a registers (default rates), b does not (50/s)
    config = parse_config(GOOD, ENV)
    clients = Clients(config, Metrics(), transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    kafka = {"bootstrap_servers": "127.0.0.1:1"}
    exchange = BudgetExchange(kafka, "t-budget", clients.buckets(),
                              clients.workers_part, Metrics())
    assert all(bucket.rate == 0 for bucket in clients.buckets().values())  # nothing before the exchange runs
    exchange._set("a", 0.5)
    exchange._set("b", 0.5)
    assert clients["b"].bucket.rate == 25.0  # half of b's 50/s: b has no bridge calls to leave room for
    assert clients["a"].bucket.rate == 8.0  # half of what the bridges leave of a's 20/s
    exchange._set("a", 1.0)
    bridge, rates = registration_bucket(config.sites["a"].rates), config.sites["a"].rates
    workers = clients["a"].bucket
    assert workers.rate + BRIDGES_PER_SITE * bridge.rate == rates.requests_per_second
    assert workers.burst + BRIDGES_PER_SITE * bridge.burst <= rates.burst


async def test_a_bucket_whose_lease_ran_out_sends_nothing_until_it_is_renewed():
    bucket = TokenBucket(rate=100, burst=10)
    await asyncio.wait_for(bucket.acquire(), 1.0)  # no lease given: for ever (a one-off reconcile, the bridge)
    bucket.renew(time.monotonic() + 0.05)
    await asyncio.wait_for(bucket.acquire(), 1.0)
    await asyncio.sleep(0.06)  # the lease runs out: the view of the other workers went stale
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    bucket.renew(time.monotonic() + 1.0)
    await asyncio.wait_for(waiter, 1.0)


def test_a_bucket_says_when_its_site_gets_work_and_when_it_has_none_left():
    bucket = TokenBucket(rate=10, burst=1)
    heard: list[int] = []
    bucket.on_want = lambda: heard.append(bucket.wanted)
    with bucket.wanting():
        bucket.want(1)  # a lane's corrections and a call under way: one change only
        bucket.want(-1)
    assert heard == [1, 0]


async def test_a_down_site_is_probed_by_one_waiting_call_per_interval_and_all_go_when_it_answers():
    back = SiteBack(interval=0.05)
    back.failing()
    released: list[float] = []
    probes: list[bool] = []
    start = time.monotonic()

    async def retry(delay: float) -> None:
        probe = await back.wait(delay)
        released.append(time.monotonic() - start)
        probes.append(probe)

    waits = [asyncio.create_task(retry(30.0)) for _ in range(5)]  # their own backoff: 30 s
    await asyncio.sleep(0.13)  # two probe intervals
    assert len(released) == 2 and released[0] >= 0.05 and released[1] >= 0.1  # one call each interval
    back.answered()  # the probe got an answer: every waiting call goes now
    await asyncio.wait_for(asyncio.gather(*waits), 1.0)
    assert len(released) == 5 and released[-1] < 1.0
    assert probes == [True, True, False, False, False]  # the probes' attempts are the site's
    up = time.monotonic()
    await back.wait(0.02)  # while the site is up a retry waits its own delay
    assert time.monotonic() - up >= 0.02


async def test_a_probe_never_goes_before_the_sites_retry_after():
    back = SiteBack(interval=0.01)
    back.failing()
    back.asked_to_wait(0.2)
    start = time.monotonic()
    await back.wait(5.0)
    assert time.monotonic() - start >= 0.19

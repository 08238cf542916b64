"""The demand exchange's rules without brokers (streams.core.shares): the parts the workers
take of a site's budget add up to at most the whole at every instant, although each
decides alone on a lagging view; work is never held to a part an idle worker sits on; a
silent worker's part comes back within the expiry. The real-Kafka acceptance tests are
in tests/app/test_federation.py; bench/bench_budget.py measures the utilisation."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from streams.contract.demand import Demand, demand_decoder, demand_encoder
from streams.core.shares import (DELTA_SECONDS, FLOOR, PUBLISH_SECONDS, RISE_SECONDS, SKEW_SECONDS, STALE_SECONDS, TTL_SECONDS, Own, View,
                                 fair_share)


def test_the_budget_goes_to_the_members_with_work_in_proportion_with_a_floor_and_to_all_when_none_has():
    assert fair_share(present=True, mine=5, others_present=2, others=[]) == 1.0
    assert fair_share(present=True, mine=0, others_present=2, others=[7]) == 0.0
    assert fair_share(present=True, mine=30, others_present=2, others=[10]) == pytest.approx(FLOOR + (1 - 2 * FLOOR) * 0.75)
    assert fair_share(present=True, mine=1, others_present=2, others=[5000]) >= FLOOR  # a lookup still goes
    assert fair_share(present=True, mine=0, others_present=2, others=[]) == pytest.approx(1 / 3)
    assert fair_share(present=False, mine=9, others_present=0, others=[]) == 0.0
    many = [fair_share(present=True, mine=1, others_present=9, others=[1] * 9)] * 10
    assert sum(many) == pytest.approx(1.0)  # more members with work than the floor allows


def test_the_parts_of_one_common_view_add_up_to_the_whole_budget():
    rng = random.Random(1)
    for _ in range(500):
        demand = [rng.choice([0, 0, 1, 3, 50, 4000]) for _ in range(rng.randint(1, 12))]
        parts = [fair_share(present=True, mine=d, others_present=len(demand) - 1,
                            others=[o for j, o in enumerate(demand) if j != i and o > 0]) for i, d in enumerate(demand)]
        assert sum(parts) == pytest.approx(1.0), demand


def test_a_rise_counts_only_once_every_fresh_peer_has_read_it_and_a_fall_at_once():
    own, now, now_us = Own(), 100.0, 1_000_000_000
    own.sent(1, now_us, {})
    own.acked(1, now)
    assert own.settled(now, now_us) == (False, {})  # not known to the others yet
    assert own.settled(now + DELTA_SECONDS, now_us + int(DELTA_SECONDS * 1e6)) == (True, {})
    now, now_us = now + 1.5, now_us + 1_500_000
    own.sent(2, now_us, {"a": 40})
    own.acked(2, now + 0.01)
    assert own.settled(now + 0.5, now_us + 500_000) == (True, {})  # the rise: not yet
    assert own.settled(now + 0.01 + DELTA_SECONDS, now_us + 1_010_000) == (True, {"a": 40})
    own.sent(3, now_us + 1_050_000, {"a": 30})  # a fall: at once, acknowledged or not
    assert own.settled(now + 1.05, now_us + 1_050_000) == (True, {"a": 30})
    own.sent(4, now_us + 1_100_000, {})
    assert own.settled(now + 1.1, now_us + 1_100_000) == (True, {})


def test_a_member_whose_records_stop_reaching_kafka_counts_itself_gone_before_the_others_do():
    own, view = Own(), View("peer")
    own.sent(1, 0, {"a": 1})
    own.acked(1, 0.0)
    view.seen(Demand(member="me", seq=1, at=0, sites={"a": 1}))
    gone_for_itself = (TTL_SECONDS - SKEW_SECONDS) * 1e6 + 1
    assert own.settled(TTL_SECONDS, int(gone_for_itself))[0] is False
    assert view.demand("a", int(gone_for_itself)) == (1, [1])  # the others still count it: skew margin
    assert view.demand("a", int(TTL_SECONDS * 1e6) + 1) == (0, [])  # then its part is theirs


def test_a_leaving_record_gives_the_part_back_at_once_and_an_old_record_never_undoes_a_newer():
    view = View("me")
    assert view.seen(Demand(member="p", seq=2, at=10, sites={"a": 2}))
    assert not view.seen(Demand(member="p", seq=1, at=5, sites={}))
    assert not view.seen(Demand(member="me", seq=9, at=10, sites={"a": 1}))  # its own: not a peer
    assert view.demand("a", 10) == (1, [2])
    view.seen(Demand(member="p", seq=3, at=11, sites={"a": 2}, leaving=True))
    assert view.demand("a", 11) == (0, [])


def test_a_peers_rise_counts_in_a_view_only_once_the_peer_may_count_it_and_a_fall_at_once():
    view, second = View("me"), int(1e6)
    view.seen(Demand(member="p", seq=1, at=0, sites={}))
    view.seen(Demand(member="p", seq=2, at=10 * second, sites={"a": 40}))
    assert view.demand("a", 10 * second) == (1, [])  # work starting on several members: the even split holds
    assert view.demand("a", 10 * second + int(RISE_SECONDS * 1e6) + 1) == (1, [40])
    view.seen(Demand(member="p", seq=3, at=11 * second, sites={"a": 5}))
    assert view.demand("a", 11 * second) == (1, [5])
    view.seen(Demand(member="p", seq=4, at=12 * second, sites={"a": 50}))
    assert view.demand("a", 12 * second) == (1, [5]) and view.demand("a", 13 * second) == (1, [50])


def test_the_record_is_json_with_its_version():
    record = Demand(member="m", seq=1, at=2, sites={"a": 3, "b": 1})
    assert demand_decoder.decode(demand_encoder.encode(record)) == record
    assert b'"version":1' in demand_encoder.encode(record)


# -- a simulation: members deciding alone on lagging views -----------------------------------

STEP = 0.01


@dataclass
class Member:
    name: str
    own: Own = field(default_factory=Own)
    view: View = field(init=False)
    wants: int = 0
    seq: int = 0
    next_beat: float = 0.0
    dead_at: float = float("inf")
    cut_off: tuple[float, float] = (float("inf"), float("inf"))  # its records reach Kafka in neither
    lag: float = 0.0  # how far behind the topic its view is (redrawn every second, up to STALE_SECONDS)

    def __post_init__(self) -> None:
        self.view = View(self.name)

    def share(self, now: float) -> float:
        if now >= self.dead_at:
            return 0.0
        present, settled = self.own.settled(now, int(now * 1e6))
        others_present, others = self.view.demand("a", int(now * 1e6))
        return fair_share(present=present, mine=min(self.wants, settled.get("a", 0)), others_present=others_present,
                          others=others)


def simulate(seed: int, seconds: float = 60.0) -> tuple[list[float], list[float]]:
    """Members whose work comes and goes at random, publishing as the exchange does; each
    peer's view lags by up to STALE_SECONDS (a fresh view), a lag held for about a second;
    one member is killed, another cannot reach Kafka for a while. Returns the sum of the
    parts at every step, and at the steps when nothing had happened for long enough that
    every member knows every other's demand (the budget must then be given out, all but
    what a draining member's stale size costs)."""
    rng = random.Random(seed)
    members = [Member(f"m{i}") for i in range(rng.randint(2, 5))]
    members[1].dead_at = rng.uniform(5, 45)  # a kill -9
    start = rng.uniform(5, 45)
    members[-1].cut_off = (start, start + rng.uniform(1, 8))  # cannot reach Kafka for a while
    events = [members[1].dead_at, *members[-1].cut_off]
    log: list[tuple[float, int, Demand]] = []  # (acked at, member, record) on the topic
    sums, settled = [], []
    now = 0.0
    while now < seconds:
        for index, member in enumerate(members):
            if now >= member.dead_at:
                continue
            changed = rng.random() < 0.001  # work comes or goes every ~10 s
            if changed:
                member.wants = 0 if member.wants else rng.choice([1, 5, 300])
                events.append(now)
            elif member.wants > 1 and rng.random() < 0.05:  # and drains
                member.wants -= 1
            if changed or now >= member.next_beat:
                member.seq += 1
                record = Demand(member=member.name, seq=member.seq, at=int(now * 1e6),
                                sites={"a": member.wants} if member.wants else {})
                member.own.sent(record.seq, record.at, dict(record.sites))
                member.next_beat = now + PUBLISH_SECONDS
                if not member.cut_off[0] <= now < member.cut_off[1]:
                    log.append((now + rng.uniform(0.001, 0.05), index, record))
        for index, member in enumerate(members):
            for acked, sender, record in log:
                if sender == index and acked <= now:
                    member.own.acked(record.seq, acked)
            if rng.random() < STEP:
                member.lag = rng.uniform(0, STALE_SECONDS)
            horizon = now - member.lag  # every record acked before it is read
            for acked, _sender, record in log:
                if acked <= horizon:
                    member.view.seen(record)
        total = sum(member.share(now) for member in members)
        sums.append(total)
        if now > 2 and all(not 0 <= now - event < TTL_SECONDS + DELTA_SECONDS + 0.2 for event in events):
            settled.append(total)
        now += STEP
        log = [entry for entry in log if entry[0] > now - 2 * TTL_SECONDS]
    return sums, settled


@pytest.mark.parametrize("seed", range(6))
def test_the_parts_never_add_up_to_more_than_the_budget_and_all_of_it_once_settled(seed):
    sums, settled = simulate(seed)
    assert max(sums) <= 1.0 + 1e-9, f"parts added up to {max(sums):.3f}"
    # (a draining member's peers read its demand up to a heartbeat late: a percent or so is lost)
    assert len(settled) > 100 and min(settled) >= 0.98, \
        f"{sum(1 for s in settled if s < 0.98)} of {len(settled)} settled steps left part of the budget idle"


def test_a_killed_members_part_is_back_within_the_expiry():
    members = [Member("m0"), Member("m1")]
    members[0].wants = members[1].wants = 10
    members[1].dead_at = 5.0
    for member in members:  # both announced their work long ago, and kept beating
        for t in range(0, 20):
            at = t * 0.5
            if at < member.dead_at:
                member.seq += 1
                record = Demand(member=member.name, seq=member.seq, at=int(at * 1e6), sites={"a": 10})
                member.own.sent(member.seq, record.at, {"a": 10})
                member.own.acked(member.seq, at)
                for other in members:
                    other.view.seen(record)
    assert members[0].share(4.9) == 0.5
    assert members[0].share(4.5 + TTL_SECONDS - 0.01) == 0.5  # the last beat was at 4.5
    assert members[0].share(4.5 + TTL_SECONDS + 0.01) == 1.0

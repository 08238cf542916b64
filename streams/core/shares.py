"""Who may spend which part of a site's API budget: the pure rules of the demand exchange.

The workers of one app publish their demand (``streams.contract.demand.Demand``: the sites
they have work waiting for, and how much) on ``<app_id>-budget`` and read each other's
(``streams.adapters.kafka.budget``). Each takes, of every site, :func:`fair_share`: the
whole budget split among the members that have work for the site in proportion to it
(each with a floor), or evenly among all members when none has. The parts the members
take add up to at most the whole budget at every instant although each decides alone, on
a view of the others that lags:

- :func:`fair_share` never grows when another member's demand grows (absent < 0 < 1 < 2
  ...) and never shrinks when the member's own does. Every member could evaluate it
  on one common vector, the demand each member *surely* published; there the parts add
  up to exactly one. Each member uses that value for itself and, for the others, what
  it has read of them, which is never below it: so each part is at most its part of the
  common vector, and the sum at most one.
- A member's own entry in that vector (:meth:`Own.settled`) is the lowest it published
  in the last :data:`DELTA_SECONDS` (and what it wants now): a rise counts only once
  every peer has surely read it, a fall at once.
- "Surely read" holds for a peer whose view was brought up to the topic's end within
  :data:`STALE_SECONDS` < :data:`DELTA_SECONDS`; a member whose own view is older lends
  itself nothing (its buckets' leases expire: no call until it is fresh again).
- A peer's rise need not count in this member's view before the peer itself counts it:
  :meth:`View.demand` takes the least the peer sent in the last :data:`RISE_SECONDS`
  (= ``DELTA_SECONDS - SKEW_SECONDS``: the peer counts it ``DELTA_SECONDS`` after it was
  acknowledged, so that much later on any clock within ``SKEW_SECONDS``), still at or
  above the peer's own entry. So when work starts on several members at once they keep
  their even split for that long instead of all waiting with nothing: with two workers
  under a trickle of changes (bench_federation.py --quick) that was the p99 (1.7-2.2 s).
- A member silent for :data:`TTL_SECONDS` is gone for the others; it counts itself gone
  :data:`SKEW_SECONDS` before that (clocks of different hosts), so a dead or cut-off
  member's part comes back to the others within ``TTL_SECONDS`` of its last record.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from streams.contract.demand import Demand

#: A member's own rise of demand counts this long after Kafka acknowledged the record
#: that says so (a fall counts at once). The cost: a worker whose work starts while
#: another has the whole budget waits about this long for its part.
DELTA_SECONDS = 0.6
#: A view not brought up to the topic's end within this long lends nothing.
STALE_SECONDS = 0.4
#: A member not heard of for this long is gone (its part goes to the others).
TTL_SECONDS = 3.0
#: The clocks of the workers' hosts may differ by up to this much (NTP keeps them to ms).
SKEW_SECONDS = 0.25
#: A peer's rise counts in a view this long after the peer sent it (a fall at once).
RISE_SECONDS = DELTA_SECONDS - SKEW_SECONDS
#: A member repeats its record this often: its heartbeat (and its demand's new size).
PUBLISH_SECONDS = 0.5
#: The part every member with work gets whatever the others' demand (less when more than
#: 1 / (2 FLOOR) members have work): a lookup next to thousands of corrections still goes
#: (1 call/s of a 20/s cap); small, so that the workers drain nearly in proportion.
FLOOR = 0.05


def fair_share(*, present: bool, mine: int, others_present: int, others: list[int]) -> float:
    """This member's part (0..1) of one site's budget.

    ``present``/``mine``: this member's settled entry (:meth:`Own.settled`: how many
    pieces of work it has for the site); ``others_present``: the other members alive in
    its view; ``others``: the demand of those of them with work for the site (each > 0).
    In proportion to the work (each correction waiting gets the same rate whichever
    worker holds it, so the workers drain together and a worker killed half way leaves
    the others work for the time its partitions take to move), with a floor each; evenly
    among every member when none has work, so that the first call of new work needs no
    round trip."""
    if not present:
        return 0.0
    if mine <= 0:
        return 0.0 if others else 1.0 / (1 + others_present)
    wanting = 1 + len(others)
    floor = min(FLOOR, 1.0 / (2 * wanting))
    return floor + (1.0 - floor * wanting) * mine / (mine + sum(others))


@dataclass(slots=True)
class Peer:
    """What this member has read of another: its newest record, and the site demands of
    the ones before it sent within :data:`RISE_SECONDS` of it (newest last)."""

    seq: int
    at: int  # unix microseconds, the peer's clock
    sites: dict[str, int]
    leaving: bool
    recent: list[tuple[int, dict[str, int]]] = field(default_factory=list)

    def counted(self, site: str, now_us: int) -> int:
        """The least demand for ``site`` it sent since ``now - RISE_SECONDS``, with the newest
        record sent before that (what the peer itself surely counts, or more)."""
        horizon = now_us - int(RISE_SECONDS * 1e6)
        least = self.sites.get(site, 0)
        if self.at < horizon:
            return least
        for at, sites in reversed(self.recent):
            least = min(least, sites.get(site, 0))
            if at < horizon:
                break
        return least


@dataclass
class View:
    """The other members as read from the topic (newest record of each)."""

    me: str
    peers: dict[str, Peer] = field(default_factory=dict)

    def seen(self, demand: Demand) -> bool:
        """Take in one record; True when it changes what this member knows."""
        if demand.member == self.me:
            return False
        known = self.peers.get(demand.member)
        if known is not None and known.seq >= demand.seq:
            return False
        recent: list[tuple[int, dict[str, int]]] = []
        if known is not None:
            horizon = demand.at - int(RISE_SECONDS * 1e6)
            recent = [(at, sites) for at, sites in known.recent if at >= horizon] + [(known.at, known.sites)]
            older = [entry for entry in known.recent if entry[0] < horizon]
            if older and recent[0][0] >= horizon:  # the newest one sent before the window stays
                recent.insert(0, older[-1])
        self.peers[demand.member] = Peer(demand.seq, demand.at, dict(demand.sites), demand.leaving, recent)
        return True

    def alive(self, now_us: int) -> list[Peer]:
        """The peers heard of within :data:`TTL_SECONDS` that have not left; forgets the rest."""
        horizon = now_us - int(TTL_SECONDS * 1e6)
        gone = [member for member, peer in self.peers.items() if peer.at < horizon - int(60e6)]
        for member in gone:  # kept a minute past their expiry: a late record stays "old"
            del self.peers[member]
        return [peer for peer in self.peers.values() if peer.at >= horizon and not peer.leaving]

    def demand(self, site: str, now_us: int) -> tuple[int, list[int]]:
        """(others present, the demand for ``site`` of those that have some)."""
        alive = self.alive(now_us)
        counted = [peer.counted(site, now_us) for peer in alive]
        return len(alive), [count for count in counted if count > 0]


@dataclass(slots=True)
class _Sent:
    seq: int
    at: int
    sites: dict[str, int]
    leaving: bool
    acked: float | None = None  # monotonic seconds, when Kafka acknowledged it


class Own:
    """This member's own records, to know what every fresh peer has surely read of it."""

    def __init__(self) -> None:
        self.records: collections.deque[_Sent] = collections.deque()

    def sent(self, seq: int, at: int, sites: dict[str, int], leaving: bool = False) -> None:
        self.records.append(_Sent(seq, at, sites, leaving))

    def acked(self, seq: int, now: float) -> None:
        for record in self.records:
            if record.seq == seq:
                record.acked = now

    def settled(self, now: float, now_us: int) -> tuple[bool, dict[str, int]]:
        """(present, the demand it may count for each site) at monotonic ``now``: from the
        newest record acknowledged :data:`DELTA_SECONDS` ago (every fresh peer has it),
        present if that one is not a leaving one and younger than the peers' expiry less
        :data:`SKEW_SECONDS`; a site's demand is the least of it in that record and every
        one sent since (a peer may have read any of them)."""
        settled = None
        for index, record in enumerate(self.records):
            if record.acked is not None and record.acked <= now - DELTA_SECONDS:
                settled = index
        if settled is None:
            return False, {}
        for _ in range(settled):  # older ones are surely superseded
            self.records.popleft()
        base = self.records[0]
        if base.leaving or base.at < now_us - int((TTL_SECONDS - SKEW_SECONDS) * 1e6):
            return False, {}
        sites = dict(base.sites)
        for index in range(1, len(self.records)):
            later = self.records[index].sites
            sites = {site: min(count, later[site]) for site, count in sites.items() if later.get(site, 0) > 0}
        return True, sites

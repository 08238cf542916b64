"""The demand exchange: each worker's part of every site's API budget, through Kafka.

A site's ``rates`` are its budget for every worker together. Each worker publishes on
``<app_id>-budget`` (one partition) which sites it has work for
(``streams.contract.demand.Demand``, keyed by its member id: at once when that changes,
else every :data:`~streams.core.shares.PUBLISH_SECONDS` as a heartbeat), reads every
other worker's records with a consumer of its own (no group: every worker reads them
all), and gives each site's :class:`~streams.adapters.budget.TokenBucket` the part
``streams.core.shares.fair_share`` says: the whole budget split among the workers that
have work for the site. So a worker with work is never held to a part that an idle
worker sits on (issue 29: with parts by partition ownership, the last ~7 s of a run ran
at 11-14 calls/s of a 20/s cap, and ~17 s at 13-14/s after a kill -9), and the parts
still add up to at most the budget at every instant (the argument is in
``streams.core.shares``). A member silent for ``TTL_SECONDS`` (a kill -9) is gone: its part
is the others' within ~3 s, not at the consumer group's session timeout.

What it costs: two records a second per worker (~150 B each) and a consumer's fetch every
100 ms; a worker whose work starts while another has the whole budget waits
``DELTA_SECONDS`` for its part. Kafka away: a worker's view goes stale, its buckets'
leases expire and it sends nothing until Kafka answers again (nothing it does without
Kafka could be recorded anyway).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.adapters.budget import TokenBucket
from streams.adapters.kafka.client import FETCH_MAX_WAIT_MS, KafkaAccess, close_quietly, kafka_transient
from streams.adapters.kafka.producers import RecordSender
from streams.contract.demand import Demand, demand_decoder, demand_encoder
from streams.core.shares import PUBLISH_SECONDS, STALE_SECONDS, TTL_SECONDS, Own, View, fair_share
from streams.metrics import Metrics
from streams.retry import Backoff, retry_forever

log = logging.getLogger("usync.budget")

#: Records sent at most this often however fast the work comes and goes (a lane that
#: empties and fills again at every correction would otherwise publish at that rate).
MIN_GAP_SECONDS = 0.05
#: A worker that had work for a site keeps a demand of one for it this long after its
#: last piece is done. Without it a correction arriving at a worker while another had work
#: for the same site waited DELTA_SECONDS for a part (its rise not yet known to all): with
#: two workers under a trickle of changes (bench_federation.py --quick) p50 went from
#: 71-75 ms to 1,024-1,047 ms. Held, the worker's part is there when the next one comes.
#: The cost: a held part unused while another worker has work (the floor, 5 %, at most
#: this long after a worker's last work for the site).
HOLD_SECONDS = 10.0
#: How far back a starting worker reads: every record that can still count, and a margin.
LOOKBACK_SECONDS = TTL_SECONDS + 5.0
#: The exchange's retries back off to 10 s, not the project's 120 s: every API call of the
#: worker waits for it, so after a long Kafka outage a 120 s step would idle the worker up
#: to two minutes past Kafka's return (one small request a retry: cheap to ask often).
RETRY_CAP_SECONDS = 10.0


class BudgetExchange:
    """One worker's side of the exchange: publishes its demand, reads the others', sets its
    buckets' shares and leases. ``parts``: the part of each site's budget the workers share
    (what the bridges' registration calls leave)."""

    def __init__(self, options: dict[str, Any], topic: str, buckets: Mapping[str, TokenBucket],
                 parts: Mapping[str, float], metrics: Metrics, *, access: KafkaAccess | None = None,
                 member: str | None = None) -> None:
        self.options, self.topic, self.buckets, self.parts = options, topic, buckets, parts
        self.metrics = metrics
        self.access = access or KafkaAccess(options)
        # A producer of its own: a send that fails during a Kafka outage replaces the
        # producer it went on, and the correct stage's one, replaced with the project's
        # backoff (to 120 s), came back up to a minute after Kafka did (the table-recovery
        # outage test took 147 s instead of 72 s)
        self.sender = RecordSender(options, "budget exchange", access=self.access, backoff_cap=RETRY_CAP_SECONDS)
        self.member = member or uuid.uuid4().hex
        self.view = View(self.member)
        self.own = Own()
        self.seq = 0
        self.fresh_at = -math.inf  # monotonic: the view held everything on the topic then
        self.shares: dict[str, float] = {}
        self.worked: dict[str, float] = {}  # site -> monotonic time this worker last had work for it
        self.stopped = False
        self._dirty = asyncio.Event()
        for site, bucket in buckets.items():
            bucket.on_want = functools.partial(self._want_changed, site)
            bucket.renew(-math.inf)  # nothing until the view is fresh and this member is known
            self._set(site, 0.0)

    # -- the shares -----------------------------------------------------------------------

    def _want_changed(self, site: str) -> None:
        now = time.monotonic()
        self.worked[site] = now
        self._apply(site, now, _now_us())  # a fall counts at once, before it is published
        self._dirty.set()

    def _demand(self, site: str, now: float) -> int:
        """This worker's work for ``site``: what waits or runs, else 1 while held (:data:`HOLD_SECONDS`)."""
        wanted = self.buckets[site].wanted
        if wanted > 0:
            return wanted
        return 1 if now - self.worked.get(site, -math.inf) < HOLD_SECONDS else 0

    def apply_all(self) -> None:
        now, now_us = time.monotonic(), _now_us()
        for site in self.buckets:
            self._apply(site, now, now_us)

    def _apply(self, site: str, now: float, now_us: int) -> None:
        present, settled = self.own.settled(now, now_us)
        others_present, others = self.view.demand(site, now_us)
        mine = min(settled.get(site, 0), self._demand(site, now))
        share = 0.0 if self.stopped else fair_share(present=present, mine=mine, others_present=others_present,
                                                    others=others)
        self._set(site, share)
        self.buckets[site].renew(self.fresh_at + STALE_SECONDS)

    def _set(self, site: str, share: float) -> None:
        if self.shares.get(site) != share:
            self.shares[site] = share
            self.buckets[site].set_share(share * self.parts.get(site, 1.0))
            self.metrics.budget_share.labels(site).set(share)

    def wanted(self) -> dict[str, int]:
        now = time.monotonic()
        demand = {site: self._demand(site, now) for site in sorted(self.buckets)}
        return {site: count for site, count in demand.items() if count > 0}

    def report(self) -> dict[str, Any]:
        """``/health``: whether the view is fresh, the peers alive, this worker's part of each site."""
        alive = self.view.alive(_now_us())
        return {"fresh": time.monotonic() - self.fresh_at < STALE_SECONDS, "peers": len(alive),
                "shares": {site: round(share, 3) for site, share in sorted(self.shares.items())},
                "wanted": self.wanted()}

    # -- the loops ------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and publish until cancelled (the worker stops); then give every part back."""
        try:
            await asyncio.gather(
                retry_forever(self._read, "budget exchange: reading the demand topic", transient=kafka_transient,
                              backoff=Backoff(cap=RETRY_CAP_SECONDS), logger=log),
                self._publish_forever())
        finally:
            await self._leave()
            await self.sender.stop()

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(**self.options, group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        try:
            await self.access.attempt(consumer.start)
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            found = await consumer.offsets_for_times({tp: int((time.time() - LOOKBACK_SECONDS) * 1000)})
            if found.get(tp) is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found[tp].offset)
            await self._consume(consumer, tp, await consumer.position(tp))
        finally:
            await close_quietly(consumer, "budget exchange")

    async def _consume(self, consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> None:
        while True:
            fetched = await consumer.getmany(tp, timeout_ms=FETCH_MAX_WAIT_MS)
            for message in fetched.get(tp, ()):
                position = message.offset + 1
                try:
                    self.view.seen(demand_decoder.decode(message.value or b""))
                except msgspec.DecodeError as exc:
                    log.warning("budget exchange: skipping record %d of %s: %s", message.offset, self.topic, exc)
            highwater, polled = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
            if highwater is not None and polled and position >= highwater:  # up to the end as of that fetch
                age = max(0.0, time.time() - polled / 1000)
                self.fresh_at = max(self.fresh_at, time.monotonic() - age)
            self.apply_all()

    async def _publish_forever(self) -> None:
        await self.sender.start()
        backoff = Backoff(cap=RETRY_CAP_SECONDS)
        while True:
            self._dirty.clear()
            try:
                await self._publish()
            except Exception as exc:
                if not kafka_transient(exc):
                    raise
                delay = backoff.next_delay()
                if backoff.attempt == 1:  # once per outage
                    log.warning("budget exchange: cannot publish this worker's demand (%s); this worker sends "
                                "no API call until it can (retrying with backoff)", exc)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            await asyncio.sleep(MIN_GAP_SECONDS)
            try:
                await asyncio.wait_for(self._dirty.wait(), PUBLISH_SECONDS)
            except TimeoutError:
                pass

    async def _publish(self, leaving: bool = False) -> None:
        self.seq += 1
        seq, sites, at = self.seq, self.wanted(), _now_us()
        self.own.sent(seq, at, sites, leaving)
        self.apply_all()  # a fall it tells counts here before any peer can read it
        record = Demand(member=self.member, seq=seq, at=at, sites=sites, leaving=leaving)
        await self.sender.send(self.topic, self.member.encode(), demand_encoder.encode(record))
        self.own.acked(seq, time.monotonic())
        self.apply_all()

    async def _leave(self) -> None:
        """Every part to 0, then say so: the others take it at once instead of at the expiry."""
        self.stopped = True
        for site in self.buckets:
            self._set(site, 0.0)
        try:
            await asyncio.wait_for(self._publish(leaving=True), 2.0)
        except (Exception, asyncio.CancelledError) as exc:  # stopping: the expiry gives it back anyway
            log.debug("budget exchange: leaving record not sent: %r", exc)


def _now_us() -> int:
    return int(time.time() * 1_000_000)

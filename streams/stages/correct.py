"""The correct stage: correction requests -> live verification -> at most one PATCH -> one outcome.

Level-triggered (docs/invariants.md, 4): a request only says "look at (link, user)".
The stage reads both offering users live, writes both answers to the events topic as
Lookup facts (so the table catches up with what it saw, and replay sees it too), lets
``decide`` judge, and PATCHes A only if the live users still differ. A PATCH that A
refuses (``Refused``: 400, 409, 422 ...) ends in a ``rejected`` outcome carrying A's
answer and a Rejection fact on the events topic, which marks the row so that neither
the fold, a reconcile nor the re-raise timer asks again until B's or A's username
changes or the retry window passes (``streams.core.decide.refused``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

from streams.contract.config import Link
from streams.contract.schema import (
    CorrectionRequest, OfferingUserRecord, Outcome, OutcomeAction, Rejection, outcome_encoder,
)
from streams.core import Verdict, decide
from streams.core.table import OK
from streams.errors import GaveUp, Refused
from streams.metrics import Metrics
from streams.ports import Clock, Emit, Enqueue, OfferingUsers, SystemClock
from streams.retry import retry_forever
from streams.stages.facts import lookup_envelope, rejection_envelope

log = logging.getLogger("usync.correct")

VERIFIED_KEYS = 100_000
# A live read of a source is reused by the other links of that source (one identity site
# feeding many) for this long, when it was sent after every fact behind their request.
SOURCE_READ_REUSE_MICROS = 5_000_000
SOURCE_READS = 10_000


def coalesce(requests: Iterable[CorrectionRequest]) -> list[CorrectionRequest]:
    """One request per (link, user): the latest wins (it carries the newest uuids)."""
    latest: dict[str, CorrectionRequest] = {}
    for request in requests:
        latest[request.key] = request
    return list(latest.values())


class Corrector:
    """Corrects (link, user)s against the sites; every attempt ends in one outcome record."""

    def __init__(self, links: Mapping[str, Link], sites: Mapping[str, OfferingUsers], metrics: Metrics,
                 emit_event: Emit, emit_outcome: Emit, clock: Clock | None = None,
                 enqueue_event: Enqueue | None = None) -> None:
        self.links = links
        self.sites = sites
        self.metrics = metrics
        self.emit_event = emit_event
        self.emit_outcome = emit_outcome
        # The facts a correction writes go out without waiting for their acks (awaited before
        # the outcome): on the worker's producer directly (``RecordSender.enqueuer``), else as
        # a task per fact around ``emit_event``.
        self.enqueue_event = enqueue_event or self._emit_in_a_task
        self.clock = clock or SystemClock()
        # (link, user) -> when its last live verification was sent. One change on B arrives
        # as several events (update, username_set) and the PATCH echoes back from A; each
        # makes a request, and re-reading both sites for each would triple the calls.
        self.verified_from: collections.OrderedDict[str, int] = collections.OrderedDict()
        # (source site, source offering, user) -> (when sent, the read, the facts it writes):
        # one change on B raises a request per link of that source, all keyed alike on the
        # corrections topic (so they reach this worker together); one read answers them all.
        self.source_reads: collections.OrderedDict[tuple[str, str, str], tuple[int, asyncio.Future, list]] = \
            collections.OrderedDict()

    async def handle_batch(self, requests: Iterable[CorrectionRequest]) -> list[Outcome]:
        """Correct every (link, user) of a batch concurrently; return once every outcome is acked."""
        return list(await asyncio.gather(*(self.handle(r) for r in coalesce(requests))))

    async def handle(self, request: CorrectionRequest) -> Outcome:
        link = self.links.get(request.link)
        if link is None:
            outcome = self._outcome(request, OutcomeAction.SKIPPED, reason="unknown link")
        elif request.observed_at and request.observed_at < self.verified_from.get(request.key, 0):
            outcome = self._outcome(request, OutcomeAction.SKIPPED, reason="covered by a later live verification")
        else:
            started = self.clock.micros()
            writes: list[asyncio.Future] = []
            try:
                outcome = await self._correct(link, request, writes)
            except GaveUp as exc:
                outcome = self._outcome(request, OutcomeAction.GAVE_UP, http_status=exc.status,
                                        reason=str(exc), attempts=exc.attempts)
            finally:
                await asyncio.gather(*writes)  # what was read is in the topic before the outcome
            if outcome.action in (OutcomeAction.CORRECTED, OutcomeAction.ALREADY_EQUAL):
                self._verified(request.key, started)
        await self.emit_outcome(request.key.encode(), outcome_encoder.encode(outcome))
        self.metrics.outcomes.labels(request.link, outcome.action.value).inc()
        return outcome

    async def dead_lettered(self, request: CorrectionRequest, reason: str) -> Outcome:
        """The outcome of a request whose handling raised (it is on the DLQ): acknowledged, counted."""
        outcome = self._outcome(request, OutcomeAction.DEAD_LETTERED, reason=reason)
        value = outcome_encoder.encode(outcome)
        await retry_forever(lambda: self.emit_outcome(request.key.encode(), value), f"outcome of {request.key}")
        self.metrics.outcomes.labels(request.link, outcome.action.value).inc()
        return outcome

    def _verified(self, key: str, started: int) -> None:
        """A, as read from ``started`` on, agreed with B (or was made to): later requests
        about facts older than that have nothing to add."""
        self.verified_from[key] = started
        self.verified_from.move_to_end(key)
        if len(self.verified_from) > VERIFIED_KEYS:
            self.verified_from.popitem(last=False)  # forgetting only costs a re-read

    async def _emit_in_a_task(self, key: bytes, value: bytes) -> asyncio.Future:
        return asyncio.ensure_future(self.emit_event(key, value))

    async def _write_fact(self, writes: list[asyncio.Future], site: str, offering: str, uuid_: str, status: int,
                          record: OfferingUserRecord | None, asked: datetime) -> None:
        writes.append(await self.enqueue_event(*lookup_envelope(site, offering, uuid_, status, record, asked)))

    async def _read(self, site: str, offering: str, uuid_: str | None, user_username: str,
                    writes: list[asyncio.Future]) -> OfferingUserRecord | None:
        api = self.sites[site]
        asked = self.clock.now()
        if uuid_:
            status, record = await api.get_offering_user(uuid_)
            if record is not None and record.user_username != user_username:
                record = None  # not this user's any more: look it up by user below
        else:
            status, record = 404, None
        if record is None and status in (200, 404):
            status, record = await api.find_offering_user(offering, user_username)
        if record is not None:
            await self._write_fact(writes, site, offering, record.uuid, 200, record, asked)
        elif uuid_ and status in (404, 410):
            await self._write_fact(writes, site, offering, uuid_, status, None, asked)
        return record

    async def _read_source(self, link: Link, request: CorrectionRequest,
                           writes: list[asyncio.Future]) -> OfferingUserRecord | None:
        """B's offering user, read live -- or the read another link of the same source sent
        after every fact behind this request (fresh enough: it can only be newer), or the
        live read the request carries (an identity lookup or a snapshot made it, and no
        fact on either side is newer), when it is as recent as that."""
        key = (link.source.site, link.source.offering, request.user_username)
        now = self.clock.micros()
        # Only while that read is the newest fact behind the request: after an edit on A, B is
        # read again (B wins, but only as it is now; tests/app/test_site_faults.py).
        if request.b_read_at and request.b_read_at >= request.observed_at and request.desired \
                and now - request.b_read_at < SOURCE_READ_REUSE_MICROS and request.b_offering_user_uuid:
            self.metrics.source_reads_shared.labels(link.source.site).inc()
            return OfferingUserRecord(uuid=request.b_offering_user_uuid, user_uuid="", user_username=request.user_username,
                                      offering_uuid=link.source.offering, username=request.desired, state=OK)
        shared = self.source_reads.get(key)
        if shared is not None:
            sent, read, its_writes = shared
            failed = read.done() and (read.cancelled() or read.exception() is not None)
            if request.observed_at and sent > request.observed_at and now - sent < SOURCE_READ_REUSE_MICROS \
                    and not failed:
                self.metrics.source_reads_shared.labels(link.source.site).inc()
                record = await asyncio.shield(read)
                writes.extend(its_writes)
                return record
        its_writes: list[asyncio.Future] = []
        read = asyncio.ensure_future(self._read(link.source.site, link.source.offering, request.b_offering_user_uuid,
                                                request.user_username, its_writes))
        self.source_reads[key] = (now, read, its_writes)
        self.source_reads.move_to_end(key)
        if len(self.source_reads) > SOURCE_READS:
            self.source_reads.popitem(last=False)
        try:
            return await read
        finally:
            writes.extend(its_writes)

    async def _correct(self, link: Link, request: CorrectionRequest, writes: list[asyncio.Future]) -> Outcome:
        """Read both sides live, PATCH A if they differ. What was read goes to the events
        topic in ``writes``, not awaited here: the PATCH need not wait for Kafka."""
        reads = await asyncio.gather(  # both finish (a read that gives up does not orphan the other's fact)
            self._read_source(link, request, writes),
            self._read(link.target.site, link.target.offering, request.a_offering_user_uuid, request.user_username, writes),
            return_exceptions=True,
        )
        for read in reads:
            if isinstance(read, BaseException):
                raise read
        b_live, a_live = reads
        decision = decide(link, b_live, a_live)
        if decision.verdict is not Verdict.PATCH:
            return self._outcome(request, decision.outcome_action, desired=decision.desired,
                                 observed=decision.observed, reason=decision.reason,
                                 a_uuid=a_live.uuid if a_live else "")
        assert decision.offering_user_uuid is not None and decision.desired is not None
        asked = self.clock.now()
        try:
            status, record = await self.sites[link.target.site].patch_username(decision.offering_user_uuid, decision.desired)
        except Refused as refused:
            log.warning("%s refused %s's username %r: HTTP %d %s", refused.site, request.key, decision.desired,
                        refused.status, refused.detail[:200])
            rejection = Rejection(link=link.name, user_username=request.user_username,
                                  offering_user_uuid=decision.offering_user_uuid, desired=decision.desired,
                                  observed=decision.observed or "", status=refused.status)
            writes.append(await self.enqueue_event(
                *rejection_envelope(link.target.site, link.target.offering, rejection, asked)))
            return self._outcome(request, OutcomeAction.REJECTED, desired=decision.desired, observed=decision.observed,
                                 http_status=refused.status, reason=f"PATCH answered HTTP {refused.status}",
                                 a_uuid=decision.offering_user_uuid, response=refused.detail)
        if record is not None:
            await self._write_fact(writes, link.target.site, link.target.offering, record.uuid, 200, record, asked)
            action, reason = OutcomeAction.CORRECTED, ""
        else:
            action, reason = OutcomeAction.REJECTED, f"PATCH answered HTTP {status}"
        return self._outcome(request, action, desired=decision.desired, observed=decision.observed,
                             http_status=status, reason=reason, a_uuid=decision.offering_user_uuid)

    def _outcome(self, request: CorrectionRequest, action: OutcomeAction, *, desired: str | None = None,
                 observed: str | None = None, http_status: int | None = None, reason: str = "",
                 attempts: int = 1, a_uuid: str = "", response: str | None = None) -> Outcome:
        return Outcome(
            link=request.link, user_username=request.user_username, action=action,
            desired=desired if desired is not None else request.desired, observed=observed,
            http_status=http_status, reason=reason, cause_event_id=request.cause_event_id,
            offering_user_uuid=a_uuid or request.a_offering_user_uuid or "", attempts=attempts,
            at=self.clock.now(), response=response,
        )

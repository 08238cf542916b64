"""The sink: correction requests -> live verification -> at most one PATCH -> one outcome.

Level-triggered (invariant 4): a request only says "look at (link, user)". The sink
reads both offering users live, writes both answers to the events topic as Lookup
facts (so the table catches up with what the sink saw, and replay sees it too), lets
``decide`` judge, and PATCHes A only if the live users still differ.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone

import msgspec

from streams.config import Link
from streams.core import Verdict, decide
from streams.metrics import Metrics
from streams.schema import (
    Envelope,
    Lookup,
    OfferingUserRecord,
    Outcome,
    OutcomeAction,
    Source,
    envelope_encoder,
    event_key,
)
from streams.waldur import Clients, GaveUp

log = logging.getLogger("usync.sink")

#: Writes (key, value) to a topic and returns once Kafka acknowledged it.
Emit = Callable[[bytes, bytes], Awaitable[None]]


class CorrectionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """"Look at (link, user)": what the fold sends to the corrections topic."""

    link: str
    user_username: str
    a_offering_user_uuid: str | None = None
    b_offering_user_uuid: str | None = None
    desired: str | None = None
    cause_event_id: str = ""
    # When the newest fact behind the request was observed (µs since the epoch): a live
    # read sent after that already covers it.
    observed_at: int = 0

    @property
    def key(self) -> str:
        return f"{self.link}:{self.user_username}"


VERIFIED_KEYS = 100_000

request_encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(CorrectionRequest)
outcome_encoder = msgspec.json.Encoder()


def coalesce(requests: Iterable[CorrectionRequest]) -> list[CorrectionRequest]:
    """One request per (link, user): the latest wins (it carries the newest uuids)."""
    latest: dict[str, CorrectionRequest] = {}
    for request in requests:
        latest[request.key] = request
    return list(latest.values())


def lookup_envelope(site: str, offering_uuid: str, offering_user_uuid: str, status: int,
                    user: OfferingUserRecord | None, asked: datetime) -> tuple[bytes, bytes]:
    """A GET's answer as a fact, stamped with when the GET was *sent*: the fold lets it win
    only over facts observed before that (see streams.core.fold)."""
    envelope = Envelope(
        event_id=uuid.uuid4().hex, site=site, source=Source.LOOKUP, offering_uuid=offering_uuid,
        received_at=asked,
        body=Lookup(offering_user_uuid=offering_user_uuid, status=status, user=user),
    )
    return event_key(site, offering_uuid).encode(), envelope_encoder.encode(envelope)


class Sink:
    def __init__(self, links: dict[str, Link], clients: Clients, metrics: Metrics,
                 emit_event: Emit, emit_outcome: Emit) -> None:
        self.links = links
        self.clients = clients
        self.metrics = metrics
        self.emit_event = emit_event
        self.emit_outcome = emit_outcome
        # (link, user) -> when its last live verification was sent. One change on B arrives
        # as several events (update, username_set) and the PATCH echoes back from A; each
        # makes a request, and re-reading both sites for each would triple the calls.
        self.verified_from: collections.OrderedDict[str, int] = collections.OrderedDict()

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
            started = int(time.time() * 1_000_000)
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

    def _verified(self, key: str, started: int) -> None:
        """A, as read from ``started`` on, agreed with B (or was made to): later requests
        about facts older than that have nothing to add."""
        self.verified_from[key] = started
        self.verified_from.move_to_end(key)
        if len(self.verified_from) > VERIFIED_KEYS:
            self.verified_from.popitem(last=False)  # forgetting only costs a re-read

    async def _read(self, site: str, offering: str, uuid_: str | None, user_username: str,
                    writes: list[asyncio.Future]) -> OfferingUserRecord | None:
        client = self.clients[site]
        asked = datetime.now(timezone.utc)
        if uuid_:
            status, record = await client.get_offering_user(uuid_)
            if record is not None and record.user_username != user_username:
                record = None  # not this user's any more: look it up by user below
        else:
            status, record = 404, None
        if record is None and status in (200, 404):
            status, record = await client.find_offering_user(offering, user_username)
        if record is not None:
            writes.append(asyncio.ensure_future(self.emit_event(*lookup_envelope(site, offering, record.uuid, 200, record, asked))))
        elif uuid_ and status in (404, 410):
            writes.append(asyncio.ensure_future(self.emit_event(*lookup_envelope(site, offering, uuid_, status, None, asked))))
        return record

    async def _correct(self, link: Link, request: CorrectionRequest, writes: list[asyncio.Future]) -> Outcome:
        """Read both sides live, PATCH A if they differ. What was read goes to the events
        topic in ``writes``, not awaited here: the PATCH need not wait for Kafka."""
        b_live, a_live = await asyncio.gather(
            self._read(link.source.site, link.source.offering, request.b_offering_user_uuid, request.user_username, writes),
            self._read(link.target.site, link.target.offering, request.a_offering_user_uuid, request.user_username, writes),
        )
        decision = decide(link, b_live, a_live)
        if decision.verdict is not Verdict.PATCH:
            return self._outcome(request, decision.outcome_action, desired=decision.desired,
                                 observed=decision.observed, reason=decision.reason,
                                 a_uuid=a_live.uuid if a_live else "")
        assert decision.offering_user_uuid is not None and decision.desired is not None
        asked = datetime.now(timezone.utc)
        status, record = await self.clients[link.target.site].patch_username(decision.offering_user_uuid, decision.desired)
        if record is not None:
            writes.append(asyncio.ensure_future(
                self.emit_event(*lookup_envelope(link.target.site, link.target.offering, record.uuid, 200, record, asked))))
            action, reason = OutcomeAction.CORRECTED, ""
        else:
            action, reason = OutcomeAction.REJECTED, f"PATCH answered HTTP {status}"
        return self._outcome(request, action, desired=decision.desired, observed=decision.observed,
                             http_status=status, reason=reason, a_uuid=decision.offering_user_uuid)

    @staticmethod
    def _outcome(request: CorrectionRequest, action: OutcomeAction, *, desired: str | None = None,
                 observed: str | None = None, http_status: int | None = None, reason: str = "",
                 attempts: int = 1, a_uuid: str = "") -> Outcome:
        return Outcome(
            link=request.link, user_username=request.user_username, action=action,
            desired=desired if desired is not None else request.desired, observed=observed,
            http_status=http_status, reason=reason, cause_event_id=request.cause_event_id,
            offering_user_uuid=a_uuid or request.a_offering_user_uuid or "", attempts=attempts,
            at=datetime.now(timezone.utc),
        )

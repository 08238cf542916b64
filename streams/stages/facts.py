"""Facts the worker learns from the APIs, as envelopes for the events topic."""

from __future__ import annotations

import uuid
from datetime import datetime

from streams.contract.schema import Envelope, Lookup, OfferingUserRecord, Origin, Rejection, envelope_encoder, event_key


def lookup_envelope(site: str, offering_uuid: str, offering_user_uuid: str, status: int,
                    user: OfferingUserRecord | None, asked: datetime) -> tuple[bytes, bytes]:
    """A GET's answer as a fact, stamped with when the GET was *sent*: the fold lets it win
    only over facts observed before that (see streams.core.fold)."""
    envelope = Envelope(
        event_id=uuid.uuid4().hex, site=site, origin=Origin.LOOKUP, offering_uuid=offering_uuid,
        received_at=asked,
        body=Lookup(offering_user_uuid=offering_user_uuid, status=status, user=user),
    )
    return event_key(site, offering_uuid).encode(), envelope_encoder.encode(envelope)


def rejection_envelope(site: str, offering_uuid: str, rejection: Rejection, asked: datetime) -> tuple[bytes, bytes]:
    """A's refusal of a PATCH as a fact on A's key, stamped with when the PATCH was sent:
    it follows the Lookup facts of the same verification in A's partition."""
    envelope = Envelope(
        event_id=uuid.uuid4().hex, site=site, origin=Origin.REJECTION, offering_uuid=offering_uuid,
        received_at=asked, body=rejection,
    )
    return event_key(site, offering_uuid).encode(), envelope_encoder.encode(envelope)

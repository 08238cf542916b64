"""The record of the API budget's exchange: one worker's demand, on ``<app_id>-budget``.

Every worker publishes, a few times a second and at once when it changes, which sites it
has work waiting for (a correction in a site's lane, or any call to the site under way:
a read, a PATCH, a lookup, a reconcile page, a retry's wait). Every worker reads every
other's, and each takes the part of a site's budget that
``streams.core.shares.fair_share`` gives it: the site's whole rate split among the
workers that have work for it, in proportion to that work. The topic is coordination, not history: a record older than
``streams.core.shares.TTL_SECONDS`` means nothing, and the topic keeps an hour.

Key: the member id (a fresh uuid per worker process). Value: this Struct as JSON.
"""

from __future__ import annotations

import msgspec

DEMAND_VERSION = 1


class Demand(msgspec.Struct, kw_only=True):
    """What one worker process wants of the sites' budgets now.

    ``member``: the process's id (a uuid4 hex, new at every start); ``seq``: its records
    in order, from 1; ``at``: unix microseconds (the sender's clock) when it was sent;
    ``sites``: each site it has work waiting for, with how much (corrections in its lane
    and calls under way), the others left out; ``leaving``: the last record
    of a worker that stops (its part is given back at once instead of at its expiry)."""

    member: str
    seq: int
    at: int
    sites: dict[str, int] = {}
    leaving: bool = False
    version: int = DEMAND_VERSION


demand_encoder = msgspec.json.Encoder()
demand_decoder = msgspec.json.Decoder(Demand)

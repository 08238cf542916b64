"""The route stage: events topic -> ``<app>-by-link``, many envelopes per record.

Folding needs both sides of a link in one partition, so every envelope is copied to
the repartition topic keyed by link name. Faust costs tens of microseconds per record
it delivers to an agent, which caps a worker near 10k records/s whatever the agent
does; so this stage runs on a consumer group of its own (``BatchConsumer``, batch
``getmany``) and writes one record per link per batch: a JSON array of the envelopes'
original bytes. The fold agent then pays faust's per-record cost once per array.

An envelope that does not decode (not even its address) goes to the DLQ with its topic,
partition and offset (``streams.stages.dead_letter``); one that no link takes is counted
as unrouted (another offering's traffic, not an error).

At-least-once: the batch's offsets are committed only after Kafka acknowledged every
record it produced, the dead letters included. A crash re-routes the uncommitted tail; the fold ignores the
duplicates (docs/invariants.md, 1 and 3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import asyncio

import msgspec

from streams.contract.schema import decode_envelopes
from streams.core import Routes
from streams.metrics import Metrics
from streams.ports import EmitAll, Record
from streams.stages.dead_letter import UNDECODABLE, DeadLetters

#: Bounds of one by-link record: well under Kafka's default 1 MB message size.
MAX_RECORD_BYTES = 512 * 1024
MAX_RECORD_ENVELOPES = 2_000
FETCH_RECORDS = 10_000


class Address(msgspec.Struct):
    """The two fields routing reads; decoding only these skips the rest of the envelope."""

    site: str
    offering_uuid: str


_address = msgspec.json.Decoder(Address)
unpack = decode_envelopes  # as msgspec.json.Decoder(list[Envelope]) decodes, faster (streams.contract.schema)


def route_values(routes: Routes, values: Iterable[bytes]) -> tuple[dict[str, list[bytes]], int, list[tuple[int, str]]]:
    """Group raw envelopes by the links they feed, in input order; count the unroutable;
    list the undecodable as (index in ``values``, reason)."""
    by_link: dict[str, list[bytes]] = {}
    unrouted = 0
    undecodable: list[tuple[int, str]] = []
    decode, by_endpoint = _address.decode, routes.by_endpoint.get
    for i, value in enumerate(values):
        try:
            address = decode(value)
        except msgspec.DecodeError as exc:  # the bridge dead-letters these; a stray writer may not
            undecodable.append((i, f"not an envelope: {exc}"))
            continue
        found = by_endpoint((address.site, address.offering_uuid)) or routes.of(address.site, address.offering_uuid)
        if not found:
            unrouted += 1
        for link, _side in found:
            by_link.setdefault(link.name, []).append(value)
    return by_link, unrouted, undecodable


def pack(values: list[bytes], max_bytes: int = MAX_RECORD_BYTES, max_count: int = MAX_RECORD_ENVELOPES) -> Iterator[bytes]:
    """JSON arrays of the values, in order, each within the bounds (a lone oversized value still goes)."""
    chunk: list[bytes] = []
    size = 0
    for value in values:
        if chunk and (size + len(value) + 1 > max_bytes or len(chunk) >= max_count):
            yield b"[" + b",".join(chunk) + b"]"
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


class Route:
    """Routes one fetched batch; returns once every by-link record is acknowledged."""

    def __init__(self, routes: Routes, metrics: Metrics, emit_by_link: EmitAll, dead: DeadLetters) -> None:
        self.routes = routes
        self.metrics = metrics
        self.emit_by_link = emit_by_link
        self.dead = dead

    async def handle(self, records: list[Record]) -> None:
        """``records``: Records, or a batch of values with offsets whose ``where(i)`` says
        where the i-th was read (``streams.adapters.kafka.consumer.ReadBatch``)."""
        values = [record.value or b"" for record in records]  # a tombstone is undecodable too
        by_link, unrouted, undecodable = route_values(self.routes, values)
        where = getattr(records, "where", records.__getitem__)
        await asyncio.gather(
            self.emit_by_link([(link.encode(), record) for link, linked in by_link.items() for record in pack(linked)]),
            *(self.dead.record(where(i), values[i], UNDECODABLE, reason) for i, reason in undecodable),
        )
        if unrouted:
            self.metrics.events_unrouted.inc(unrouted)
        self.metrics.events_routed.inc(len(values))

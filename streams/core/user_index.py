"""The user index: which facts of the permanent topics are about which user (``usync index``).

``usync history USER`` must not read the whole history for one user. The indexer folds the
permanent topics with the worker's own pure fold (``fold_traced`` says which rows each fact
wrote), and writes, per fact and user, an :class:`~streams.contract.schema.IndexEntry` (where
the fact is, what the fold concluded after it) to the user-index topic, keyed by the user; a
reader reads the one partition its key is on. An :class:`~streams.contract.schema.IndexAlias`
is written when a fact first ties a uuid (user_uuid, offering user) to a user, so a reader
given a uuid finds the user the same way.

Events name only the offering user: the fold's identity index attributes them, as it does
in the worker (a parked event is indexed when the lookup that attributes it is folded).
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.contract.config import Link
from streams.contract.schema import (
    Conclusion, CorrectionRequest, DeadLetter, Envelope, IndexAlias, IndexEntry, IndexRecord, Listed, Lookup,
    OfferingUserRecord, Outcome, SnapshotPage, normalize_uuid, request_decoder,
)
from streams.core import Row, TableState, compile_routes, correction_needed, desired, refused
from streams.core.fold import fold_traced, observed_at

Indexed = list[tuple[str, IndexRecord]]  # (key, record) for the user-index topic


def conclusion(row: Row, link: Link | None) -> Conclusion:
    drift = link is not None and correction_needed(row, link) and not refused(row)
    return Conclusion(b_username=row.b_username, b_state=row.b_state, a_username=row.a_username, a_state=row.a_state,
                      drift=drift, asks=desired(row) if drift else None)


def _records(envelope: Envelope) -> list[OfferingUserRecord]:
    body = envelope.body
    if isinstance(body, SnapshotPage):
        return body.users
    if isinstance(body, Lookup | Listed):
        return [body.user] if body.user is not None else []
    return []


class Indexer:
    def __init__(self, links: Sequence[Link], state: TableState | None = None) -> None:
        self.routes = compile_routes(links)
        self.state = state if state is not None else TableState()

    def event(self, envelope: Envelope, partition: int, offset: int) -> Indexed:
        """Fold one events-topic fact; the entries of the users whose rows it wrote, and new aliases."""
        aliases = self._new_aliases(envelope)
        keys = fold_traced(self.state, self.routes, envelope)
        at, what = envelope.received_at, envelope.body.__struct_config__.tag
        out: Indexed = []
        for key in keys:
            row = self.state.rows[key]
            entry = IndexEntry(user=row.user_username, topic="events", partition=partition, offset=offset, at=at,
                               what=str(what), link=row.link, after=conclusion(row, self.routes.by_name.get(row.link)))
            out.append((row.user_username, entry))
        return aliases + out

    def _new_aliases(self, envelope: Envelope) -> Indexed:
        """uuid -> user for each record the identity index does not know yet (before it is folded)."""
        routes = self.routes.of_envelope(envelope)
        out: Indexed = []
        for record in _records(envelope):
            uuid = normalize_uuid(record.uuid)
            if all(self.state.index.get(f"{link.name}:{side}:{uuid}") == record.user_username for link, side in routes):
                continue
            out.append((uuid, IndexAlias(uuid=uuid, user=record.user_username, site=envelope.site)))
            if record.user_uuid:
                user_uuid = normalize_uuid(record.user_uuid)
                out.append((user_uuid, IndexAlias(uuid=user_uuid, user=record.user_username, site=envelope.site)))
        return out

    @staticmethod
    def outcome(outcome: Outcome, partition: int, offset: int) -> Indexed:
        return [(outcome.user_username, IndexEntry(user=outcome.user_username, topic="outcomes", partition=partition,
                                                   offset=offset, at=outcome.at, what=outcome.action.value,
                                                   link=outcome.link))]

    @staticmethod
    def dead_letter(letter: DeadLetter, partition: int, offset: int) -> Indexed:
        """A correction request the worker dead-lettered names its user; a broker message does not."""
        if not letter.topic.endswith("-corrections"):
            return []
        try:
            request: CorrectionRequest = request_decoder.decode(letter.raw)
        except ValueError:
            return []
        return [(request.user_username, IndexEntry(user=request.user_username, topic="dlq", partition=partition,
                                                   offset=offset, at=letter.received_at, what="dead-letter",
                                                   link=request.link))]


__all__ = ["Indexer", "conclusion", "observed_at"]

"""In-memory adapters of the ports (``streams.ports``), for unit tests: no I/O, no broker.

- :class:`MemoryOfferingUsers`: one Waldur site's offering users, with scripted failures (:class:`SiteScript`);
- :class:`MemoryEmit`: an ``Emit``/``EmitAll`` that keeps what it was given, in order;
- :class:`MemoryFoldTables` and :class:`MemoryLinkGroup`: the fold's tables over plain dicts;
- :class:`FixedClock`: a ``Clock`` that moves only when told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from msgspec.structs import replace

from streams.contract.schema import (
    CorrectionRequest,
    Envelope,
    OfferingUserRecord,
    Outcome,
    envelope_decoder,
    envelope_encoder,
    normalize_uuid,
    outcome_decoder,
    request_decoder,
    state_display,
)
from streams.core import TableState
from streams.errors import GaveUp, Refused
from streams.ports import Answer, Page

PAGE_SIZE = 300  # as streams.adapters.waldur


class SiteScript:
    """What a test scripts for a site, and every call the site was asked, as ``(method, what)``.

    :meth:`refuse_patch`: a status for every PATCH of one uuid (404/410 answered, any
    other raised as :class:`Refused` with ``detail``, as the HTTP client does); :meth:`fail`: the next calls
    raise :class:`GaveUp`; :meth:`hold`: calls wait until :meth:`release` (``reached`` is set
    when one arrives).
    """

    name: str

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refused: dict[str, tuple[int, str]] = {}
        self.failures: list[tuple[int | None, int]] = []  # (status, attempts) per failing call to come
        self.reached = asyncio.Event()
        self.gate: asyncio.Event | None = None

    def refuse_patch(self, uuid: str, status: int = 400, detail: str = "") -> None:
        self.refused[normalize_uuid(uuid)] = status, detail

    def fail(self, times: int = 1, status: int | None = 503, attempts: int = 8) -> None:
        """The next ``times`` calls give up as the HTTP client does once its attempts ran out."""
        self.failures.extend([(status, attempts)] * times)

    def hold(self) -> None:
        self.gate, self.reached = asyncio.Event(), asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    def called(self, method: str) -> list[Any]:
        return [what for name, what in self.calls if name == method]

    async def _call(self, method: str, what: Any) -> None:
        self.calls.append((method, what))
        if self.gate is not None:
            self.reached.set()
            await self.gate.wait()
        if self.failures:
            status, attempts = self.failures.pop(0)
            raise GaveUp(self.name, status, attempts, f"{method} {what}: no answer after {attempts} attempts")


class MemoryOfferingUsers(SiteScript):
    """One site's offering users (the ``OfferingUsers`` port), held by uuid.

    ``calls`` holds ``("get", uuid)``, ``("find", (offering, user_username))``,
    ``("patch", (uuid, username))`` and ``("list", (offering, states, page))``, each
    appended before it is answered (scripts: :class:`SiteScript`).
    """

    def __init__(self, name: str, records: Iterable[OfferingUserRecord] = (), page_size: int = PAGE_SIZE) -> None:
        super().__init__()
        self.name = name
        self.page_size = page_size
        self.records: dict[str, OfferingUserRecord] = {}
        for record in records:
            self.put(record)

    def put(self, record: OfferingUserRecord) -> None:
        self.records[normalize_uuid(record.uuid)] = record

    def remove(self, uuid: str) -> None:
        self.records.pop(normalize_uuid(uuid), None)

    async def get_offering_user(self, uuid: str) -> Answer:
        await self._call("get", uuid)
        record = self.records.get(normalize_uuid(uuid))
        return (200, record) if record is not None else (404, None)

    async def find_offering_user(self, offering_uuid: str, user_username: str) -> Answer:
        await self._call("find", (offering_uuid, user_username))
        for record in self.records.values():
            if normalize_uuid(record.offering_uuid) == normalize_uuid(offering_uuid) \
                    and record.user_username == user_username:
                return 200, record
        return 404, None

    async def patch_username(self, uuid: str, username: str) -> Answer:
        await self._call("patch", (uuid, username))
        key = normalize_uuid(uuid)
        if key in self.refused:
            status, detail = self.refused[key]
            if status in (404, 410):
                return status, None
            raise Refused(self.name, status, detail)
        if key not in self.records:
            return 404, None
        self.records[key] = record = replace(self.records[key], username=username)
        return 200, record

    async def list_offering_users(self, offering_uuid: str, states: list[str]) -> AsyncIterator[Page]:
        """Pages of ``page_size`` of the offering's users in ``states`` (display names);
        one empty last page when none, as Waldur answers."""
        wanted = {state_display(state) for state in states}
        found = [record for record in self.records.values()
                 if normalize_uuid(record.offering_uuid) == normalize_uuid(offering_uuid)
                 and state_display(record.state) in wanted]
        pages = [found[i:i + self.page_size] for i in range(0, len(found), self.page_size)] or [[]]
        for number, users in enumerate(pages, start=1):
            await self._call("list", (offering_uuid, tuple(states), number))
            yield number, len(found), users, number == len(pages)


class MemoryEmit:
    """``emit(key, value)`` (and ``emit.all(pairs)``) kept in ``records``, in order.

    With a shared ``journal`` list, each write also appends ``(name, key)`` there, so a
    test can check the order of writes across topics.
    """

    def __init__(self, name: str = "topic", journal: list[tuple[str, bytes]] | None = None) -> None:
        self.name = name
        self.journal = journal
        self.records: list[tuple[bytes, bytes]] = []

    async def __call__(self, key: bytes, value: bytes) -> None:
        self.records.append((key, value))
        if self.journal is not None:
            self.journal.append((self.name, key))

    async def all(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for key, value in pairs:
            await self(key, value)

    def keys(self) -> list[bytes]:
        return [key for key, _ in self.records]

    def envelopes(self) -> list[Envelope]:
        return [envelope_decoder.decode(value) for _, value in self.records]

    def outcomes(self) -> list[Outcome]:
        return [outcome_decoder.decode(value) for _, value in self.records]

    def requests(self) -> list[CorrectionRequest]:
        return [request_decoder.decode(value) for _, value in self.records]


@dataclass
class MemoryLinkGroup:
    """One link's share of a fold batch (``LinkGroup``): by-link records, JSON arrays of envelopes."""

    link: str
    values: list[bytes] = field(default_factory=list)
    places: list[tuple[str, int, int]] = field(default_factory=list)  # empty: ("by-link", 0, i)

    def __post_init__(self) -> None:
        self.places = self.places or [("by-link", 0, i) for i in range(len(self.values))]

    @classmethod
    def of(cls, link: str, *envelopes: Envelope) -> MemoryLinkGroup:
        """One by-link record holding ``envelopes`` (as the route stage packs them)."""
        return cls(link, [envelope_encoder.encode(list(envelopes))])


TABLES = ("rows", "index", "pending")


class MemoryFoldTables:
    """``FoldTables`` over a :class:`TableState` of dicts, which the fold writes directly.

    ``take_changes()`` answers ``{table: {key: value, or None when deleted}}`` since the
    last take; ``write()`` appends ``(link, changes)`` to ``written`` and returns no
    awaitable. ``entered`` lists the groups' links in the order ``partition`` was entered.
    """

    def __init__(self, state: TableState | None = None) -> None:
        self.state = state if state is not None else TableState()
        self.entered: list[str] = []
        self.written: list[tuple[str, dict[str, dict[str, Any]]]] = []
        self.taken = self._copy()

    def _copy(self) -> dict[str, dict[str, Any]]:
        return {name: dict(getattr(self.state, name)) for name in TABLES}

    @contextlib.contextmanager
    def partition(self, group: Any) -> Iterator[None]:
        self.entered.append(group.link)
        yield

    def take_changes(self) -> dict[str, dict[str, Any]]:
        now, before = self._copy(), self.taken
        changes = {}
        for name in TABLES:
            changed = {key: value for key, value in now[name].items() if before[name].get(key) != value}
            changed.update({key: None for key in before[name] if key not in now[name]})
            changes[name] = changed
        self.taken = now
        return changes

    def write(self, group: Any, changes: dict[str, dict[str, Any]]) -> list[Any]:
        self.written.append((group.link, changes))
        return []


class FixedClock:
    """A ``Clock`` standing at ``at`` until :meth:`advance` moves it."""

    def __init__(self, at: datetime = datetime(2026, 1, 2, tzinfo=timezone.utc)) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def micros(self) -> int:
        return int(self.at.timestamp() * 1_000_000)

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)

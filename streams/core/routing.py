"""Which links an envelope feeds, and on which side.

An envelope comes from one (site, offering). Every link whose source is that offering
reads it as B ("source"); every link whose target is it reads it as A ("target").
Many links may share a source, and one link's target may be another link's source,
so one envelope can feed several links on different sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Literal

from streams.contract.config import Endpoint, Link
from streams.contract.schema import Envelope, normalize_uuid

Side = Literal["source", "target"]
SOURCE: Final = "source"
TARGET: Final = "target"

Route = tuple[Link, Side]
_NO_ROUTES: Final[tuple[Route, ...]] = ()


def _endpoint_key(endpoint: Endpoint) -> tuple[str, str]:
    return endpoint.site, normalize_uuid(endpoint.offering)


class Routes:
    """The links compiled into a lookup table: (site, offering_uuid) -> its routes.

    Built once per configuration so that the hot path is one dict lookup per envelope
    (``by_endpoint``, keyed as written: :meth:`of` also finds an older producer's spelling).
    """

    __slots__ = ("links", "by_name", "by_endpoint")

    def __init__(self, links: Iterable[Link]) -> None:
        self.links: tuple[Link, ...] = tuple(links)
        self.by_name: dict[str, Link] = {link.name: link for link in self.links}
        by_endpoint: dict[tuple[str, str], list[Route]] = {}
        for link in self.links:
            by_endpoint.setdefault(_endpoint_key(link.source), []).append((link, SOURCE))
            by_endpoint.setdefault(_endpoint_key(link.target), []).append((link, TARGET))
        self.by_endpoint: dict[tuple[str, str], tuple[Route, ...]] = {key: tuple(routes) for key, routes in by_endpoint.items()}

    def of(self, site: str, offering_uuid: str) -> tuple[Route, ...]:
        found = self.by_endpoint.get((site, offering_uuid))
        if found is None:  # rare: a dashed or upper-case uuid from an older producer
            found = self.by_endpoint.get((site, normalize_uuid(offering_uuid)), _NO_ROUTES)
        return found

    def of_envelope(self, envelope: Envelope) -> tuple[Route, ...]:
        return self.of(envelope.site, envelope.offering_uuid)


def compile_routes(links: Sequence[Link] | Routes) -> Routes:
    return links if isinstance(links, Routes) else Routes(links)


def routes(links: Sequence[Link] | Routes, envelope: Envelope) -> list[Route]:
    """Every (link, side) the envelope feeds; empty when no link knows its offering."""
    return list(compile_routes(links).of_envelope(envelope))


def side_of(link: Link, envelope: Envelope) -> Side | None:
    """The side of ``link`` the envelope speaks for (after repartitioning by link name)."""
    here = (envelope.site, normalize_uuid(envelope.offering_uuid))
    if here == _endpoint_key(link.source):
        return SOURCE
    if here == _endpoint_key(link.target):
        return TARGET
    return None

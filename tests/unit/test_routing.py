"""Routing: which links an envelope feeds, and as which side."""

from datetime import datetime, timezone

from streams.contract.config import Endpoint, Link
from streams.core import SOURCE, TARGET, compile_routes, routes, side_of
from streams.contract.schema import Envelope, Lookup, Origin

OFF_A = "a" * 32
OFF_B = "b" * 32
OFF_C = "c" * 32
OFF_D = "d" * 32

B_TO_A = Link(name="b-to-a", source=Endpoint("b", OFF_B), target=Endpoint("a", OFF_A))
B_TO_C = Link(name="b-to-c", source=Endpoint("b", OFF_B), target=Endpoint("c", OFF_C))
A_TO_D = Link(name="a-to-d", source=Endpoint("a", OFF_A), target=Endpoint("d", OFF_D))
LINKS = [B_TO_A, B_TO_C, A_TO_D]


def envelope(site: str, offering: str) -> Envelope:
    return Envelope(
        event_id="e1", site=site, origin=Origin.LOOKUP, offering_uuid=offering,
        received_at=datetime(2026, 1, 1, tzinfo=timezone.utc), body=Lookup(offering_user_uuid="1" * 32, status=404),
    )


def names(found):
    return sorted((link.name, side) for link, side in found)


def test_a_shared_source_feeds_every_link_that_reads_it():
    assert names(routes(LINKS, envelope("b", OFF_B))) == [("b-to-a", SOURCE), ("b-to-c", SOURCE)]


def test_a_target_that_is_another_links_source_feeds_both_sides():
    assert names(routes(LINKS, envelope("a", OFF_A))) == [("a-to-d", SOURCE), ("b-to-a", TARGET)]


def test_a_plain_target_feeds_only_its_link():
    assert names(routes(LINKS, envelope("d", OFF_D))) == [("a-to-d", TARGET)]


def test_an_offering_no_link_knows_routes_nowhere():
    assert routes(LINKS, envelope("b", OFF_C)) == []  # right offering uuid, wrong site
    assert routes(LINKS, envelope("zz", OFF_B)) == []


def test_dashed_or_upper_case_offering_uuids_route_like_the_canonical_form():
    dashed = f"{OFF_B[:8]}-{OFF_B[8:12]}-{OFF_B[12:16]}-{OFF_B[16:20]}-{OFF_B[20:]}".upper()
    assert names(routes(LINKS, envelope("b", dashed))) == [("b-to-a", SOURCE), ("b-to-c", SOURCE)]


def test_compiled_routes_are_reused_and_index_links_by_name():
    compiled = compile_routes(LINKS)
    assert compile_routes(compiled) is compiled
    assert compiled.by_name["a-to-d"] is A_TO_D
    assert names(routes(compiled, envelope("a", OFF_A))) == names(routes(LINKS, envelope("a", OFF_A)))


def test_side_of_a_link_after_repartitioning():
    assert side_of(A_TO_D, envelope("a", OFF_A)) == SOURCE
    assert side_of(B_TO_A, envelope("a", OFF_A)) == TARGET
    assert side_of(B_TO_C, envelope("a", OFF_A)) is None

"""The audit's matching (streams/core/audit.py) and its stage (streams/ops/audit.py) with fakes
at the ports (Waldur's event log, usync's topics), and the event log's HTTP adapter
(streams/adapters/waldur_events.py) against ``httpx.MockTransport``: no I/O."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from streams.adapters.waldur import SiteClient
from streams.adapters.waldur_events import WaldurEventLog
from streams.contract.config import Endpoint, Link, Rates, Secret
from streams.core.audit import LoggedChange, Patch, Sighting, Window, match
from streams.errors import GaveUp
from streams.metrics import Metrics
from streams.ops.audit import Audit, lines, summary, tables, write_json_lines

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)
WINDOW = Window(since=T0, until=T0 + timedelta(hours=1))
LINK = Link(name="hpc", target=Endpoint(site="a", offering="a" * 32), source=Endpoint(site="b", offering="b" * 32))


def ou(n: int) -> str:
    return f"{n:032x}"


def change(n: int, old: str, new: str, at: timedelta, uuid: str | None = None) -> LoggedChange:
    return LoggedChange(event_uuid=uuid or f"e{n}-{new}", created=T0 + at, offering_user_uuid=ou(n), old=old, new=new,
                        actor="usync-bot")


def patch(n: int, old: str, new: str, at: timedelta) -> Patch:
    return Patch(link="hpc", user_username=f"user{n}", offering_user_uuid=ou(n), old=old, new=new, at=T0 + at)


def seen(n: int, username: str, at: timedelta, event: str = "") -> Sighting:
    return Sighting(event_id=event or f"m{n}-{username}-{at.total_seconds()}", offering_user_uuid=ou(n),
                    username=username, received_at=T0 + at)


def scenario() -> tuple[list[LoggedChange], list[Patch], list[Sighting]]:
    """The acceptance's shape: 50 PATCHes Waldur logged (A's echo on the broker for most,
    as update then username_set), 5 changes Waldur logged that the broker lost, 2 PATCHes
    to a Waldur that logged nothing."""
    changes, patches, sightings = [], [], []
    for n in range(50):
        at = timedelta(seconds=30 + n)
        changes.append(change(n, "", f"u{n}", at))
        patches.append(patch(n, "", f"u{n}", at + timedelta(milliseconds=40)))
        if n % 10:
            sightings += [seen(n, f"u{n}", at + timedelta(milliseconds=90)), seen(n, f"u{n}", at + timedelta(milliseconds=95))]
    for n in range(100, 105):
        changes.append(change(n, f"u{n}", f"manual{n}", timedelta(minutes=10)))
    for n in range(200, 202):
        patches.append(patch(n, "", f"u{n}", timedelta(minutes=20)))
        sightings.append(seen(n, f"u{n}", timedelta(minutes=20, seconds=1)))
    return changes, patches, sightings


def test_the_three_groups_are_exactly_the_patches_logged_the_broker_gaps_and_the_unlogged_patches() -> None:
    report = match(*scenario(), WINDOW, "a")
    assert [m.change.offering_user_uuid for m in report.matched] == [ou(n) for n in range(50)]
    assert all(m.patch is not None and m.patch.new == m.change.new for m in report.matched)
    assert [m.sighting is not None for m in report.matched] == [bool(n % 10) for n in range(50)]
    assert [c.offering_user_uuid for c in report.only_waldur] == [ou(n) for n in range(100, 105)]
    assert [p.offering_user_uuid for p in report.only_usync] == [ou(200), ou(201)]
    assert (report.waldur_records, report.patches, report.sightings) == (55, 52, 92)
    assert not report.clean


def test_a_change_someone_else_made_is_matched_by_its_broker_event_alone() -> None:
    report = match([change(1, "x", "y", timedelta(minutes=5))], [], [seen(1, "y", timedelta(minutes=5, seconds=2))],
                   WINDOW)
    [m] = report.matched
    assert m.patch is None and m.sighting is not None and report.clean


def test_time_decides_between_two_changes_to_the_same_username() -> None:
    """x -> y, y -> x, x -> y: each record takes the PATCH and the event nearest it, once."""
    changes = [change(1, "x", "y", timedelta(minutes=1), "first"), change(1, "y", "x", timedelta(minutes=2)),
               change(1, "x", "y", timedelta(minutes=30), "third")]
    patches = [patch(1, "x", "y", timedelta(minutes=30, seconds=1)), patch(1, "x", "y", timedelta(minutes=1, seconds=1))]
    sightings = [seen(1, "y", timedelta(minutes=1, seconds=2)), seen(1, "x", timedelta(minutes=2, seconds=1)),
                 seen(1, "y", timedelta(minutes=31))]
    report = match(changes, patches, sightings, WINDOW)
    by_uuid = {m.change.event_uuid: m for m in report.matched}
    assert by_uuid["first"].patch.at == T0 + timedelta(minutes=1, seconds=1)
    assert by_uuid["third"].patch.at == T0 + timedelta(minutes=30, seconds=1)
    assert by_uuid["third"].sighting.received_at == T0 + timedelta(minutes=31)
    assert len(report.matched) == 3 and report.clean


def test_beyond_the_skew_a_patch_and_a_record_are_two_findings() -> None:
    report = match([change(1, "", "y", timedelta(minutes=5))], [patch(1, "", "y", timedelta(minutes=8))], [],
                   WINDOW)  # skew 2 min
    assert report.matched == [] and len(report.only_waldur) == 1 and len(report.only_usync) == 1


def test_a_patch_over_a_username_changed_meanwhile_is_matched_and_shows_what_usync_read() -> None:
    report = match([change(1, "edited", "y", timedelta(minutes=5))], [patch(1, "stale", "y", timedelta(minutes=5))],
                   [], WINDOW)
    [line] = lines(report)
    assert line["group"] == "matched" and line["old_username"] == "edited" and line["usync_read"] == "stale"


def test_a_broker_event_an_hour_late_is_another_change() -> None:
    report = match([change(1, "", "y", timedelta(minutes=1))], [], [seen(1, "y", timedelta(minutes=62))], WINDOW)
    assert report.matched == [] and len(report.only_waldur) == 1


def test_records_outside_the_window_are_not_reported_but_still_pair() -> None:
    """A record a second before ``since`` and its PATCH a second after it: neither is a finding."""
    report = match([change(1, "", "y", -timedelta(seconds=1))], [patch(1, "", "y", timedelta(seconds=1))], [], WINDOW)
    assert report.matched == [] and report.only_usync == [] and report.only_waldur == []


class FakeWaldur:
    def __init__(self, changes: list[LoggedChange]) -> None:
        self.changes, self.asked = changes, []

    async def username_changes(self, offerings, start, end):
        self.asked.append((list(offerings), start, end))
        return [c for c in self.changes if start <= c.created < end]


class FakeTopics:
    def __init__(self, patches: list[Patch], sightings: list[Sighting]) -> None:
        self.patches, self.sightings, self.asked = patches, sightings, []

    async def read(self, site, links, start, end):
        self.asked.append((site, [link.name for link in links], start, end))
        return self.patches, self.sightings


async def test_the_stage_reads_both_sources_wide_enough_and_reports() -> None:
    changes, patches, sightings = scenario()
    waldur, topics = FakeWaldur(changes), FakeTopics(patches, sightings)
    report = await Audit("a", [LINK], ["a" * 32], waldur, topics).run(WINDOW)
    assert waldur.asked == [(["a" * 32], T0 - timedelta(minutes=2), T0 + timedelta(hours=1, minutes=2))]
    assert topics.asked == [("a", ["hpc"], T0 - timedelta(minutes=2), T0 + timedelta(hours=2))]
    assert (len(report.matched), len(report.only_waldur), len(report.only_usync)) == (50, 5, 2)
    out = io.StringIO()
    write_json_lines(report, out)
    groups = [json.loads(line)["group"] for line in out.getvalue().splitlines()]
    assert groups == ["matched"] * 50 + ["only-waldur"] * 5 + ["only-usync"] * 2
    assert "50 matched, 5 only in Waldur (broker gaps), 2 only in usync" in summary(report)
    matched, gaps, unlogged = tables(report, shown=10)
    assert (matched.row_count, gaps.row_count, unlogged.row_count) == (10, 5, 2)
    assert "50" in str(matched.title) and "the last 10" in str(matched.title)


# -- the event log over HTTP (httpx.MockTransport: no network) -----------------------------


def event_log_site(total: int, status: int = 200) -> tuple[Any, list[Any]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if status != 200:
            return httpx.Response(status, json={"detail": "no"})
        page = int(request.url.params.get("page", "1"))
        events = [{"uuid": f"{n:032x}", "created": (T0 + timedelta(seconds=n)).isoformat(),
                   "event_type": "marketplace_offering_user_updated", "message": "...",
                   "context": {"offering_user_uuid": ou(n), "old_username": None, "new_username": f"u{n}",
                               "changed_fields": ["username"], "user_username": "staff"}}
                  for n in range((page - 1) * 100, min(page * 100, total))]
        return httpx.Response(200, json=events, headers={"X-Result-Count": str(total)})

    client = SiteClient("a", "http://a.example/api/", Secret("t0ken"), Rates(requests_per_second=1000, burst=1000),
                        Metrics(), max_attempts=1, transport=httpx.MockTransport(answer))
    return client, seen


async def test_the_event_log_is_read_page_by_page_with_the_filters_waldur_knows() -> None:
    client, seen = event_log_site(250)
    log = WaldurEventLog(client, "http://a.example/api")
    changes = await log.username_changes(["a" * 32], T0, T0 + timedelta(hours=1))
    assert [c.new for c in changes] == [f"u{n}" for n in range(250)] and log.calls == 3
    assert changes[0] == LoggedChange(event_uuid="0" * 32, created=T0, offering_user_uuid=ou(0), old="", new="u0",
                                      actor="staff")
    params = [dict(r.url.params) for r in seen]
    assert sorted(p["page"] for p in params) == ["1", "2", "3"]
    assert params[0] == {"event_type": "marketplace_offering_user_updated", "o": "created", "page_size": "100",
                         "scope": f"http://a.example/api/marketplace-provider-offerings/{'a' * 32}/", "page": "1",
                         "created_from": f"{T0.timestamp():.6f}", "created_to": f"{(T0 + timedelta(hours=1)).timestamp():.6f}"}


async def test_an_event_log_that_refuses_gives_up_naming_the_status() -> None:
    client, _ = event_log_site(0, status=403)
    with pytest.raises(GaveUp, match="HTTP 403"):
        await WaldurEventLog(client, "http://a.example/api/").username_changes(["a" * 32], T0, T0)

"""``usync audit --site S``: usync's corrections on one site against Waldur's own audit log.

Waldur logs every username change of an offering user (``marketplace_offering_user_updated``:
offering user, old and new username, time; ``GET /api/events/``). usync has two records
of its own: every PATCH it made (a ``corrected`` outcome: the offering user, the username
it read before, the one it set, when the answer came) and every broker event it folded
(the events topic: the offering user and the username the event carries, when the bridge
received it). The audit joins them and sorts every record into one of three groups:

- **matched**: a change Waldur logged that usync made (a corrected outcome) or saw (a
  broker event carrying the new username);
- **only in Waldur**: a change usync neither made nor saw on the broker, a *broker gap*
  (a message Waldur did not send, or that was lost before the bridge; a reconcile or a
  lookup that saw the username later does not count: it is the broker that missed it);
- **only in usync**: a PATCH usync made that Waldur did not log (a Waldur that logs no
  username changes, or a log that lost a record).

How records pair (offering user, usernames, time): streams/core/audit.py.

The sources are ports (:class:`WaldurLog`, :class:`UsyncFacts`): the command wires the
site's HTTP client (streams/adapters/waldur_events.py) and the topics (streams/ops/audit_sources.py);
tests/unit/test_audit.py wires fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any, Protocol

import msgspec

from streams.contract.config import Config, Link
from streams.contract.schema import normalize_uuid
from streams.core.audit import LoggedChange, Patch, Report, Sighting, Window, match

__all__ = ["Audit", "LoggedChange", "Patch", "Report", "Sighting", "UsyncFacts", "WaldurLog", "Window", "lines",
           "site_offerings", "summary", "tables", "write_json_lines"]


# -- the ports and the stage ---------------------------------------------------------------


class WaldurLog(Protocol):
    """The site's event log: its username changes of ``offerings`` created in ``[start, end)``."""

    async def username_changes(self, offerings: Sequence[str], start: datetime, end: datetime) -> list[LoggedChange]: ...


class UsyncFacts(Protocol):
    """What usync wrote about ``site`` between ``start`` and ``end``: its PATCHes (the
    outcomes of ``links`` that target the site) and the broker events it folded."""

    async def read(self, site: str, links: Sequence[Link], start: datetime,
                   end: datetime) -> tuple[list[Patch], list[Sighting]]: ...


def site_offerings(config: Config, site: str) -> tuple[list[Link], list[str]]:
    """The links that touch ``site`` and its offerings on them (as target or source)."""
    links = [link for link in config.links if site in (link.target.site, link.source.site)]
    offerings = {normalize_uuid(end.offering) for link in links for end in (link.target, link.source) if end.site == site}
    return links, sorted(offerings)


class Audit:
    """One audit of one site: both sources read at once, then matched."""

    def __init__(self, site: str, links: Sequence[Link], offerings: Sequence[str], waldur: WaldurLog,
                 usync: UsyncFacts) -> None:
        self.site, self.links, self.offerings = site, list(links), list(offerings)
        self.waldur, self.usync = waldur, usync

    async def run(self, window: Window) -> Report:
        started = time.monotonic()
        start, end = window.reading()
        # Waldur's log holds nothing that pairs with a usync record later than until + skew
        changes, (patches, sightings) = await asyncio.gather(
            self.waldur.username_changes(self.offerings, start, window.until + window.skew),
            self.usync.read(self.site, self.links, start, end))
        report = match(changes, patches, sightings, window, self.site)
        report.seconds = time.monotonic() - started
        return report


# -- output ------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def lines(report: Report) -> list[dict[str, Any]]:
    """One JSON object per record: ``group`` is matched, only-waldur or only-usync."""
    out: list[dict[str, Any]] = []
    for m in report.matched:
        c, p, s = m.change, m.patch, m.sighting
        out.append({"group": "matched", "offering_user_uuid": c.offering_user_uuid, "old_username": c.old,
                    "new_username": c.new, "waldur_event": c.event_uuid, "waldur_at": _iso(c.created),
                    "actor": c.actor, "by_usync": p is not None,
                    **({"link": p.link, "user_username": p.user_username, "usync_at": _iso(p.at),
                        "usync_read": p.old, "cause_event_id": p.cause_event_id} if p else {}),
                    **({"broker_event": s.event_id, "broker_at": _iso(s.received_at)} if s else {})})
    out += [{"group": "only-waldur", "offering_user_uuid": c.offering_user_uuid, "old_username": c.old,
             "new_username": c.new, "waldur_event": c.event_uuid, "waldur_at": _iso(c.created), "actor": c.actor}
            for c in report.only_waldur]
    out += [{"group": "only-usync", "offering_user_uuid": p.offering_user_uuid, "old_username": p.old,
             "new_username": p.new, "link": p.link, "user_username": p.user_username, "usync_at": _iso(p.at),
             "cause_event_id": p.cause_event_id} for p in report.only_usync]
    return out


def summary(report: Report) -> str:
    w = report.window
    return (f"audit of site {report.site}, {_iso(w.since)} to {_iso(w.until)}: {len(report.matched)} matched, "
            f"{len(report.only_waldur)} only in Waldur (broker gaps), {len(report.only_usync)} only in usync "
            f"(PATCHes Waldur did not log); read {report.waldur_records} Waldur records in {report.calls} calls, "
            f"{report.patches} PATCH outcomes, {report.sightings} broker events in {report.seconds:.1f} s")


def write_json_lines(report: Report, out: IO[str]) -> None:
    encode = msgspec.json.encode
    for line in lines(report):
        out.write(encode(line).decode() + "\n")


def tables(report: Report, shown: int = 50) -> list[Any]:
    """The three groups as rich tables (a terminal); matched cut to its last ``shown`` rows."""
    from rich.table import Table

    groups = {"matched": [], "only-waldur": [], "only-usync": []}
    for line in lines(report):
        groups[line["group"]].append(line)
    titles = {"matched": "matched", "only-waldur": "only in Waldur (a broker gap)",
              "only-usync": "only in usync (a PATCH Waldur did not log)"}
    out: list[Any] = []
    for group, rows in groups.items():
        cut = rows[-shown:] if group == "matched" else rows
        table = Table(title=f"{titles[group]}: {len(rows)}" + (f" (the last {len(cut)})" if len(cut) < len(rows) else ""))
        columns = ["time", "offering user", "old", "new", "by"] + (["seen"] if group == "matched" else [])
        for column in columns:
            table.add_column(column)
        for r in cut:
            by = f"usync: {r['link']} / {r['user_username']}" if r.get("link") else (r.get("actor") or "(no request)")
            row = [r.get("waldur_at") or r.get("usync_at"), r["offering_user_uuid"], r["old_username"], r["new_username"], by]
            if group == "matched":
                row.append(", ".join(x for x in ("PATCH" if r.get("by_usync") else "",
                                                 "broker" if r.get("broker_event") else "") if x))
            table.add_row(*row)
        out.append(table)
    return out

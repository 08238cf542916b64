"""Waldur's event log on the simulator (``GET /api/events/``), as waldur-mastermind writes and
serves it: what a username change logs, who sees what, the filters and pages, the paths
that log nothing; the real generated client (PyPI waldur-api-client) parses every answer.
REST over HTTP, no broker (facts: /work/shared/waldur-reference.md)."""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from waldur_api_client import AuthenticatedClient
from waldur_api_client.api.events import events_list
from waldur_api_client.models import Event
from waldur_api_client.utils import parse_link_header

from waldursim import OLDER_WALDUR, USERNAME_UPDATED, Federation, Site

OU = "marketplace-offering-users/"


def api(site: Site, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Token {token}"}, timeout=10)


@pytest.fixture
async def world(sim_offline: Federation):
    site = sim_offline.add_site("a")
    await sim_offline.start()
    sp = site.create_customer("sp")
    offering = site.create_offering(sp, "hpc")
    other = site.create_offering(site.create_customer("other-sp"), "cloud")
    manager = site.create_user("mgr", full_name="Offering Manager")
    site.add_offering_manager(manager, offering)
    alice = site.create_user("alice")
    ou = site.create_offering_user(offering, alice)
    return site, sp, offering, other, manager, ou


def scope(site: Site, offering) -> str:
    return f"{site.url}marketplace-provider-offerings/{offering.uuid}/"


async def test_a_patch_logs_one_username_change_with_waldurs_context(world) -> None:
    site, sp, offering, _, manager, ou = world
    async with api(site, manager.token) as c:
        assert (await c.patch(f"{OU}{ou.uuid}/", json={"username": "alice1"})).status_code == 200
        assert (await c.patch(f"{OU}{ou.uuid}/", json={"username": "alice1"})).status_code == 200  # same: no save
        r = await c.get("events/", params={"scope": scope(site, offering), "event_type": USERNAME_UPDATED})
    assert r.status_code == 200 and r.headers["X-Result-Count"] == "1"
    [event] = r.json()
    assert set(event) == {"uuid", "created", "event_type", "message", "context"}
    assert event["event_type"] == USERNAME_UPDATED
    assert event["message"] == f"Offering user username changed for {ou.uuid}: '' -> 'alice1'."
    context = event["context"]
    assert {k: context[k] for k in ("offering_user_uuid", "old_username", "new_username", "changed_fields")} == \
        {"offering_user_uuid": ou.uuid, "old_username": "", "new_username": "alice1", "changed_fields": ["username"]}
    assert context["offering_uuid"] == offering.uuid and context["customer_uuid"] == sp.uuid
    assert context["affected_user_username"] == "alice" and context["affected_user_uuid"] == ou.user
    # the actor is the caller (the request middleware's fields), not the affected user
    assert (context["user_uuid"], context["user_username"], context["user_full_name"]) == \
        (manager.uuid, "mgr", "Offering Manager")
    assert context["ip_address"] == "127.0.0.1"
    created = datetime.fromisoformat(event["created"])
    assert abs(created.timestamp() - time.time()) < 30


async def test_who_sees_what_scope_staff_and_others(world) -> None:
    site, sp, offering, other, manager, ou = world
    site.set_username(ou, "alice1")
    stranger = site.create_user("stranger")
    async with api(site, manager.token) as c:
        assert (await c.get("events/")).json() == []  # not staff, no scope: nothing
        assert len((await c.get("events/", params={"scope": scope(site, offering)})).json()) == 2  # created, updated
        assert (await c.get("events/", params={"scope": scope(site, other)})).json() == []  # not its offering
        r = await c.get("events/", params={"scope": f"{site.url}customers/{'0' * 32}/"})
        assert r.status_code == 400 and "scope" in r.json()
    async with api(site, stranger.token) as c:
        assert (await c.get("events/", params={"scope": scope(site, offering)})).json() == []
    async with api(site, site.staff_token) as c:
        everything = (await c.get("events/")).json()
        by_customer = (await c.get("events/", params={"scope": f"{site.url}customers/{sp.uuid}/"})).json()
        uuid = everything[0]["uuid"]
        assert (await c.get(f"events/{uuid}/")).json()["uuid"] == uuid
    assert [e["event_type"] for e in everything] == [USERNAME_UPDATED, "marketplace_offering_user_created"]
    assert by_customer == everything  # an offering user's events are in its offering's and its customer's feeds
    async with api(site, stranger.token) as c:
        assert (await c.get(f"events/{uuid}/")).status_code == 404


async def test_filters_time_type_context_message_order_and_pages(world) -> None:
    site, sp, offering, _, manager, ou = world
    for n in range(1, 26):
        site.set_username(ou, f"alice{n}")
    log = site.event_log.events
    middle = log[12].created.timestamp()
    async with api(site, site.staff_token) as c:
        async def get(**params) -> list[dict]:
            r = await c.get("events/", params={"event_type": USERNAME_UPDATED, "page_size": 100, **params})
            assert r.status_code == 200, r.text
            return r.json()
        newest_first = await get()
        assert [e["context"]["new_username"] for e in newest_first] == [f"alice{n}" for n in range(25, 0, -1)]
        oldest_first = await get(o="created")
        assert oldest_first == newest_first[::-1]
        after = await get(o="created", created_from=middle)  # >=
        before = await get(o="created", created_to=middle)  # <
        assert before + after == oldest_first and log[12].uuid in {e["uuid"] for e in after}
        assert all(datetime.fromisoformat(e["created"]).timestamp() < middle for e in before)
        assert len(await get(customer_uuid=sp.uuid)) == 25 and await get(customer_uuid="f" * 32) == []
        assert await get(user_uuid=ou.user) == []  # user_uuid is the actor; set outside a request: none
        assert [e["context"]["new_username"] for e in await get(message="'ALICE24' -> 'alice25'")] == ["alice25"]
        assert len(await get(feature="users")) == 0  # the "users" group holds created/deleted/restriction
        assert len((await c.get("events/", params={"feature": "users"})).json()) == 1  # the creation
        assert (await c.get("events/", params={"created_from": "yesterday"})).status_code == 400
        assert (await c.get("events/", params={"o": "uuid"})).status_code == 400
        assert len((await c.get("events/", params={"page_size": 100})).json()) == 26  # the creation too
        r = await c.get("events/", params={"page_size": 10, "event_type": USERNAME_UPDATED})
        assert r.headers["X-Result-Count"] == "25" and len(r.json()) == 10 and 'rel="next"' in r.headers["Link"]


async def test_pages_are_capped_at_100(world) -> None:
    site, _, offering, _, _, ou = world
    for n in range(120):
        site.set_username(ou, f"u{n}")
    async with api(site, site.staff_token) as c:
        r = await c.get("events/", params={"page_size": 300})
    assert len(r.json()) == 100 and r.headers["X-Result-Count"] == "121"


async def test_silent_paths_log_nothing_and_an_older_waldur_logs_only_creations(world) -> None:
    site, _, offering, _, manager, ou = world
    before = len(site.event_log.events)
    with site.bulk():  # side effects skipped: no message, no log
        site.set_username(ou, "imported")
    site.drift_username(ou, "behind-the-orm")  # no save signal
    site.events_enabled = False  # the broker is silent, the log is not
    site.set_username(ou, "broker-silent")
    site.events_enabled = True
    assert [e.context["new_username"] for e in site.event_log.events[before:]] == ["broker-silent"]
    site.event_log.logged_types = OLDER_WALDUR
    async with api(site, manager.token) as c:
        assert (await c.patch(f"{OU}{ou.uuid}/", json={"username": "old-waldur"})).status_code == 200
        created = await c.post(OU, json={"offering": offering.uuid, "user": site.create_user("bob").uuid})
        assert created.status_code == 201
    assert [e.event_type for e in site.event_log.events[before + 1:]] == ["marketplace_offering_user_created"]
    assert site.event_log.not_logged == 1


async def test_the_generated_client_parses_every_page(world) -> None:
    site, _, offering, _, manager, ou = world
    for n in range(35):
        site.set_username(ou, f"alice{n}")
    client = AuthenticatedClient(base_url=site.origin, token=manager.token)
    seen: list[Event] = []
    page: int | None = 1
    while page is not None:
        response = await events_list.asyncio_detailed(client=client, scope=scope(site, offering),
                                                      event_type=[USERNAME_UPDATED], created_from=0.0,
                                                      created_to=time.time() + 60, page=page, page_size=10)
        assert response.status_code == 200
        seen += response.parsed
        nxt = parse_link_header(response.headers.get("Link", "")).get("next")
        page = int(parse_qs(urlparse(nxt).query)["page"][0]) if nxt else None
    assert len(seen) == 35 and all(isinstance(e, Event) for e in seen)
    assert seen[0].context["new_username"] == "alice34" and seen[-1].created <= seen[0].created

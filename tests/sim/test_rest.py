"""The offering-user REST API over HTTP: pagination, filters, auth, visibility, PATCH
semantics, auto-creation. No broker needed: events are checked in site.outgoing."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from waldursim import SLURM, Federation, Site
from waldursim.models import OfferingUserState


def api(site: Site, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return httpx.AsyncClient(base_url=site.url, headers=headers, timeout=10)


def dashed(hex32: str) -> str:
    return str(uuid.UUID(hex32))


def links(response: httpx.Response) -> dict[str, str]:
    out = {}
    for part in response.headers.get("Link", "").split(","):
        if part.strip():
            url, rel = part.split(";")
            out[rel.strip().split("=")[1].strip('"')] = url.strip()[1:-1]
    return out


@pytest.fixture
async def world(sim_offline: Federation):
    site = sim_offline.add_site("b")
    await sim_offline.start()
    sp = site.create_customer("sp")
    slurm = site.create_offering(sp, "slurm", type=SLURM)
    basic = site.create_offering(sp, "basic", type="Marketplace.Basic")
    manager = site.create_user("manager")
    site.add_offering_manager(manager, slurm)
    users = [site.create_user(f"user{i:02d}", active_isds=["isd:x"] if i % 2 else []) for i in range(25)]
    ous = [site.create_offering_user(slurm, u) for u in users]
    for ou in ous[:5]:
        site.set_username(ou, f"name-{ou.uuid[:6]}")
    site.update_offering_user(ous[5], is_restricted=True)
    basic_ous = [site.create_offering_user(basic, u) for u in users[:3]]
    return site, slurm, basic, manager, users, ous, basic_ous


async def test_pagination_link_header_and_count(world) -> None:
    site, slurm, *_ = world
    async with api(site, site.staff_token) as c:
        params = {"offering_uuid": slurm.uuid, "state": ["Requested", "OK"], "page_size": 10}
        seen = []
        r = await c.get("marketplace-offering-users/", params=params)
        assert r.status_code == 200 and isinstance(r.json(), list)
        assert r.headers["X-Result-Count"] == "25"
        first_links = links(r)
        assert set(first_links) == {"next", "last"}
        assert first_links["next"].startswith(site.url + "marketplace-offering-users/?")
        q = parse_qs(urlsplit(first_links["next"]).query)
        assert q == {"offering_uuid": [slurm.uuid], "state": ["Requested", "OK"], "page_size": ["10"], "page": ["2"]}
        assert parse_qs(urlsplit(first_links["last"]).query)["page"] == ["3"]
        seen += r.json()
        while "next" in links(r):
            r = await c.get(links(r)["next"])
            assert r.status_code == 200
            seen += r.json()
        assert set(links(r)) == {"first", "prev"}
        assert len(seen) == 25 and len({x["uuid"] for x in seen}) == 25
        r = await c.get("marketplace-offering-users/", params={**params, "page": 4})
        assert r.status_code == 404 and r.json() == {"detail": "Invalid page."}
        r = await c.get("marketplace-offering-users/", params={"offering_uuid": slurm.uuid})
        assert len(r.json()) == 10  # default page size


async def test_page_size_is_capped_at_300(sim_offline: Federation) -> None:
    site = sim_offline.add_site("b")
    await sim_offline.start()
    offering = site.create_offering(site.create_customer())
    for i in range(310):
        site.create_offering_user(offering, site.create_user(f"u{i}"), username=f"x{i}", emit=False)
    async with api(site, site.staff_token) as c:
        r = await c.get("marketplace-offering-users/", params={"page_size": 1000})
        assert len(r.json()) == 300 and r.headers["X-Result-Count"] == "310"
        assert parse_qs(urlsplit(links(r)["next"]).query)["page"] == ["2"]
        r = await c.head("marketplace-offering-users/")
        assert r.status_code == 200 and r.headers["X-Result-Count"] == "310" and r.content == b""


async def test_filters(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world
    async with api(site, site.staff_token) as c:
        async def uuids(**params) -> set[str]:
            r = await c.get("marketplace-offering-users/", params={**params, "page_size": 300})
            assert r.status_code == 200, r.text
            return {x["uuid"] for x in r.json()}

        assert await uuids(offering_uuid=basic.uuid) == {o.uuid for o in basic_ous}
        assert len(await uuids(offering_uuid=[slurm.uuid, dashed(basic.uuid)])) == 28
        assert await uuids(offering_uuid=slurm.uuid, state="OK") == {o.uuid for o in ous[:5]}
        assert len(await uuids(offering_uuid=slurm.uuid, state=["OK", "Requested"])) == 25
        assert len(await uuids(offering_uuid=slurm.uuid, state="Creating")) == 0
        assert await uuids(user_uuid=dashed(users[0].uuid)) == {ous[0].uuid, basic_ous[0].uuid}
        assert await uuids(user_username="user01", offering_uuid=slurm.uuid) == {ous[1].uuid}
        assert await uuids(offering_uuid=slurm.uuid, is_restricted="true") == {ous[5].uuid}
        assert len(await uuids(offering_uuid=slurm.uuid, is_restricted="false")) == 24
        r = await c.get("marketplace-offering-users/", params={"state": "Bogus"})
        assert r.status_code == 400 and "state" in r.json()
        r = await c.get("marketplace-offering-users/", params={"offering_uuid": "nope"})
        assert r.status_code == 400


async def test_object_fields(world) -> None:
    site, slurm, _, _, users, ous, _ = world
    async with api(site, site.staff_token) as c:
        r = await c.get(f"marketplace-offering-users/{dashed(ous[0].uuid)}/")
    assert r.status_code == 200
    x = r.json()
    assert x["uuid"] == ous[0].uuid and len(x["uuid"]) == 32 and "-" not in x["uuid"]
    assert x["url"] == f"{site.url}marketplace-offering-users/{ous[0].uuid}/"
    assert x["user_uuid"] == users[0].uuid and x["user_username"] == "user00"
    assert x["offering_uuid"] == slurm.uuid and x["offering"].endswith(f"/{slurm.uuid}/")
    assert x["state"] == "OK" and x["runtime_state"] == "Active" and x["is_restricted"] is False
    assert x["created"].endswith("Z") and x["modified"].endswith("Z")
    assert x["user_email"] == "user00@example.org" and "user_full_name" in x


async def test_auth_401_403_404(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world
    async with api(site, None) as c:
        r = await c.get("marketplace-offering-users/")
        assert r.status_code == 401 and r.json() == {"detail": "Authentication credentials were not provided."}
    async with api(site, "0" * 40) as c:
        r = await c.get("marketplace-offering-users/")
        assert r.status_code == 401 and r.json() == {"detail": "Invalid token."}
    async with api(site, manager.token) as c:
        # basic is not the manager's offering: not visible at all.
        r = await c.get(f"marketplace-offering-users/{basic_ous[0].uuid}/")
        assert r.status_code == 404
        r = await c.patch(f"marketplace-offering-users/{basic_ous[0].uuid}/", json={"username": "x"})
        assert r.status_code == 404
        r = await c.post("marketplace-offering-users/", json={"offering": basic.uuid, "user": users[5].uuid})
        assert r.status_code == 403
        r = await c.get(f"marketplace-offering-users/{'f' * 32}/")
        assert r.status_code == 404
    # An offering user sees its own record but may not change it: 403.
    async with api(site, users[0].token) as c:
        assert (await c.get(f"marketplace-offering-users/{ous[0].uuid}/")).status_code == 200
        r = await c.patch(f"marketplace-offering-users/{ous[0].uuid}/", json={"username": "mine"})
        assert r.status_code == 403
        r = await c.patch(f"users/{users[0].uuid}/", json={"managed_isds": ["isd:x"]})
        assert r.status_code == 403
        assert (await c.get(f"users/{users[1].uuid}/")).status_code == 404


async def test_visibility_by_role(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world

    async def visible(token: str) -> set[str]:
        async with api(site, token) as c:
            r = await c.get("marketplace-offering-users/", params={"page_size": 300})
            return {x["uuid"] for x in r.json()}

    everything = {o.uuid for o in ous + basic_ous}
    assert await visible(site.staff_token) == everything
    assert await visible(manager.token) == {o.uuid for o in ous}
    owner = site.create_user("owner")
    site.add_customer_owner(owner, site.store.offerings[slurm.uuid].customer)
    assert await visible(owner.token) == everything
    idm = site.create_user("idm", is_identity_manager=True, managed_isds=["isd:x"])
    odd = {o.uuid for o in ous + basic_ous if site.store.users[o.user].active_isds}
    assert await visible(idm.token) == odd
    site.update_user(idm, managed_isds=[])
    assert await visible(idm.token) == set()
    site.update_user(idm, managed_isds=["isd:x"], is_identity_manager=False)
    assert await visible(idm.token) == set()
    assert await visible(users[0].token) == {ous[0].uuid, basic_ous[0].uuid}


async def test_patch_semantics_and_events(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world
    target = ous[10]
    before = len(site.outgoing)
    async with api(site, manager.token) as c:
        assert target.state == OfferingUserState.REQUESTED
        r = await c.patch(f"marketplace-offering-users/{dashed(target.uuid)}/", json={"username": "alice"})
        assert r.status_code == 200 and r.json()["state"] == "OK" and r.json()["username"] == "alice"
        modified = r.json()["modified"]
        r = await c.patch(f"marketplace-offering-users/{target.uuid}/", json={"username": "alice"})
        assert r.status_code == 200 and r.json()["modified"] == modified  # no-op: no save
        r = await c.post("marketplace-offering-users/", json={"offering": slurm.uuid, "user": users[10].uuid})
        assert r.status_code == 400  # (offering, user) is unique
    # No subscribers yet: nothing routed. Subscribe the manager (offline: logged only).
    assert len(site.outgoing) == before
    await site.subscribe(manager, slurm)
    await site.subscribe(manager, basic)  # not visible to the manager: no messages
    site.set_username(target, "alice")  # same value: no event
    site.set_username(target, "alice2")
    site.set_username(basic_ous[0], "b0")  # basic offering: invisible to manager
    actions = [o.message.action for o in list(site.outgoing)[before:]]
    assert actions == ["update", "username_set"]
    site.set_username(target, "")  # emptied: update only
    assert [o.message.action for o in list(site.outgoing)[before + 2:]] == ["update"]


async def test_auto_creation_on_project_role(sim_offline: Federation) -> None:
    site = sim_offline.add_site("b")
    await sim_offline.start()
    customer = site.create_customer("c")
    offering = site.create_offering(site.create_customer("sp"))
    project = site.create_project(customer, "p")
    early = site.create_user("early")
    site.add_project_member(early, project)
    assert site.find_offering_user(offering, early) is None  # no resource yet
    site.create_resource(offering, project, backend_id="acc1")
    created = site.find_offering_user(offering, early)
    assert created is not None and created.state == OfferingUserState.REQUESTED and created.username == ""
    late = site.create_user("late")
    [ou] = site.add_project_member(late, project)
    assert ou.state == OfferingUserState.REQUESTED and ou.username == ""
    assert site.add_project_member(late, project) == []  # idempotent
    mgr = site.create_user("mgr")
    site.add_offering_manager(mgr, offering)
    await site.subscribe(mgr, offering)
    site.set_username(ou, "late1")
    assert [o.message.action for o in site.outgoing] == ["update", "username_set"]
    import json
    assert json.loads(site.outgoing[-1].message.body)["resource_backend_ids"] == ["acc1"]


async def test_delete_and_user_patch(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world
    async with api(site, site.staff_token) as c:
        r = await c.delete(f"marketplace-offering-users/{ous[3].uuid}/")
        assert r.status_code == 204
        assert (await c.get(f"marketplace-offering-users/{ous[3].uuid}/")).status_code == 404
        r = await c.patch(f"users/{dashed(users[2].uuid)}/", json={"managed_isds": ["a"], "is_identity_manager": True})
        assert r.status_code == 200 and r.json()["managed_isds"] == ["a"] and r.json()["is_identity_manager"]


async def test_payload_keys_for_every_action(sim_offline: Federation) -> None:
    import json

    site = sim_offline.add_site("b")
    await sim_offline.start()
    offering = site.create_offering(site.create_customer(), type=SLURM)
    mgr = site.create_user("mgr")
    site.add_offering_manager(mgr, offering)
    await site.subscribe(mgr, offering)
    user = site.create_user("u")
    ou = site.create_offering_user(offering, user)
    site.set_username(ou, "u1")
    site.update_user(user, email="new@example.org")
    site.update_offering_user(ou, runtime_state="Pending account linking")
    site.delete_offering_user(ou)
    payloads = [json.loads(o.message.body) for o in site.outgoing]
    assert [p["action"] for p in payloads] == [
        "create", "update", "username_set", "attribute_update", "update", "delete"]
    base = {"offering_user_uuid", "user_uuid", "username", "action", "offering_uuid", "object_type", "schema_version"}
    assert set(payloads[0]) == base | {"state", "runtime_state", "attributes"}
    assert set(payloads[1]) == base | {"state", "runtime_state", "changed_fields"}
    assert set(payloads[2]) == base | {"state", "resource_backend_ids"} and payloads[2]["state"] == 5
    assert set(payloads[3]) == base | {"changed_attributes", "attributes"}
    assert payloads[3]["changed_attributes"] == ["email"] and payloads[3]["attributes"]["email"] == "new@example.org"
    assert payloads[4]["changed_fields"] == ["runtime_state"] and payloads[4]["state"] == "OK"
    assert set(payloads[5]) == base
    assert all(p["offering_uuid"] == offering.uuid and len(p["offering_user_uuid"]) == 32 for p in payloads)


async def test_admin_endpoints_calls_info_events(world) -> None:
    site, slurm, basic, manager, users, ous, basic_ous = world
    async with api(site, manager.token) as c:
        await c.get("marketplace-offering-users/", params={"offering_uuid": slurm.uuid})
        await c.get(f"marketplace-offering-users/{ous[0].uuid}/")
    async with httpx.AsyncClient(base_url=site.admin_url) as admin:
        log = (await admin.get("calls")).json()
        assert [(x["method"], x["endpoint"], x["status"], x["user"]) for x in log] == [
            ("GET", "GET /api/marketplace-offering-users/", 200, "manager"),
            ("GET", "GET /api/marketplace-offering-users/{uuid}/", 200, "manager"),
        ]
        assert log[0]["query"] == f"offering_uuid={slurm.uuid}" and log[0]["time"] > 0
        assert (await admin.get("calls", params={"since": log[0]["seq"]})).json() == log[1:]
        counts = (await admin.get("calls/counts")).json()
        assert counts["total"] == 2 and counts["endpoints"]["GET /api/marketplace-offering-users/{uuid}/"] == 1
        assert (await admin.delete("calls")).status_code == 204 and site.calls.count() == 0
        info = (await admin.get("info")).json()
        assert info["url"] == site.url and info["staff_token"] == site.staff_token
        assert {"username": "manager", "uuid": manager.uuid, "token": manager.token, "is_staff": False} in info["users"]
        assert (await admin.put("events", json={"enabled": False})).json() == {"enabled": False}
        assert site.events_enabled is False
        r = await admin.patch("faults", json={"drop": 2})
        assert r.status_code == 400  # validated: rates are fractions
        assert (await admin.get("publisher")).json()["pending"] == 0

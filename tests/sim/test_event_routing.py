"""The seed's Suite 2 (TestIdentityManagerEventRouting) against the simulator and the
real RabbitMQ: registration through the REST API, delivery over STOMP over WebSocket
with the subscription's credentials, routing by OFFERING.MANAGER and by ISD overlap."""

from __future__ import annotations

import asyncio
import json

import httpx
import pika
import pytest

from waldursim import QUEUE_ARGUMENTS, SLURM, Federation, message_id, topic_for

from tests.support.services import RABBITMQ

from .stomp import Frame, StompClient

WS_URL = RABBITMQ.web_stomp_url
ISD = "isd:integration-test"
ENVELOPE = {"offering_uuid", "object_type", "schema_version"}  # on every payload, both queue styles
PAYLOAD_KEYS = {
    "create": {"offering_user_uuid", "user_uuid", "username", "state", "runtime_state", "action", "attributes"} | ENVELOPE,
    "update": {"offering_user_uuid", "user_uuid", "username", "state", "runtime_state", "changed_fields",
               "action"} | ENVELOPE,
    "username_set": {"offering_user_uuid", "user_uuid", "username", "state", "action",
                     "resource_backend_ids"} | ENVELOPE,
}


def client(site, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Token {token}"}, timeout=10)


async def register(site, token: str, offering_uuid: str, name: str) -> dict:
    """The three calls a consumer makes; each repeated to check 201 then 200."""
    async with client(site, token) as api:
        r = await api.post("marketplace-site-agent-identities/", json={"offering": offering_uuid, "name": name})
        assert r.status_code == 201, r.text
        identity = r.json()
        path = f"marketplace-site-agent-identities/{identity['uuid']}/register_event_subscription/"
        r = await api.post(path, json={"observable_object_type": "offering_user"})
        assert r.status_code == 201, r.text
        sub = r.json()
        r = await api.post(path, json={"observable_object_type": "offering_user"})
        assert r.status_code == 200 and r.json()["uuid"] == sub["uuid"]
        body = {"offering_uuid": offering_uuid, "object_type": "offering_user"}
        r = await api.post(f"event-subscriptions/{sub['uuid']}/create_queue/", json=body)
        assert r.status_code == 201, r.text
        queue = r.json()
        r = await api.post(f"event-subscriptions/{sub['uuid']}/create_queue/", json=body)
        assert r.status_code == 200 and r.json()["queue_name"] == queue["queue_name"]
    assert queue["queue_name"] == f"subscription_{sub['uuid']}_offering_{offering_uuid}_offering_user"
    return {"sub": sub, "queue": queue}


def check_message(frame: Frame, vhost: str, queue: str, action: str) -> dict:
    payload = json.loads(frame.body)
    assert payload["action"] == action
    assert set(payload) == PAYLOAD_KEYS[action]
    assert frame.headers["persistent"] == "true"
    assert frame.headers["content-type"] == "application/json"
    assert frame.headers["x-message-id"] == message_id(vhost, topic_for(queue), frame.body)
    return payload


async def receive(stomp: StompClient, vhost: str, queue: str, actions: list[str]) -> list[dict]:
    payloads = []
    for action in actions:
        frame = await stomp.next_message(timeout=10)
        payloads.append(check_message(frame, vhost, queue, action))
        await stomp.ack(frame)
    return payloads


def publish_sentinel(vhost: str, queue: str) -> None:
    """A marker published behind whatever is in the queue: FIFO makes it a barrier."""
    params = pika.ConnectionParameters("127.0.0.1", RABBITMQ.amqp_port, vhost, pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", queue, b'{"action": "sentinel"}', mandatory=True)


async def test_suite2_identity_manager_event_routing(sim_federation: Federation) -> None:
    site = sim_federation.add_site("b")
    await sim_federation.start()

    # test_01: entities as in the seed, plus web-STOMP availability.
    sp_b = site.create_customer("sp-b")
    offering_b = site.create_offering(sp_b, "slurm-b", type=SLURM)
    customer_c = site.create_customer("customer-c")
    project_b = site.create_project(customer_c, "project-b")
    site.create_resource(offering_b, project_b, "res-b", backend_id="hpc_b_1")
    user_a = site.create_user("user_a")
    user_b = site.create_user("user_b")
    subject = site.create_user("subject_user", active_isds=[ISD])
    site.add_customer_owner(user_b, customer_c)
    async with client(site, site.staff_token) as staff:
        r = await staff.patch(f"users/{user_b.uuid}/", json={"is_identity_manager": True, "managed_isds": [ISD]})
        assert r.status_code == 200 and r.json()["managed_isds"] == [ISD]
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(WS_URL.replace("ws://", "http://"))).status_code == 426

    # test_02: user_a becomes OFFERING.MANAGER on B; both register and connect.
    site.add_offering_manager(user_a, offering_b)
    reg_a = await register(site, user_a.token, offering_b.uuid, "inttest-ua")
    reg_b = await register(site, user_b.token, offering_b.uuid, "inttest-ub")
    stomps = {}
    for name, user, reg in (("a", user_a, reg_a), ("b", user_b, reg_b)):
        assert reg["queue"]["vhost"] == user.uuid and reg["sub"]["user_uuid"] == user.uuid
        stomp = await StompClient.connect(WS_URL, login=reg["sub"]["uuid"], passcode=user.token, vhost=user.uuid)
        await stomp.subscribe(topic_for(reg["queue"]["queue_name"]))
        stomps[name] = stomp
    try:
        # test_03: staff creates the offering user on B and sets a username.
        async with client(site, site.staff_token) as staff:
            r = await staff.post("marketplace-offering-users/",
                                 json={"offering": offering_b.uuid, "user": subject.uuid})
            assert r.status_code == 201, r.text
            ou = r.json()
            r = await staff.patch(f"marketplace-offering-users/{ou['uuid']}/", json={"username": "stomp-test-1"})
            assert r.status_code == 200 and r.json()["state"] == "OK"
        for name, user, reg in (("a", user_a, reg_a), ("b", user_b, reg_b)):
            create, update, username_set = await receive(
                stomps[name], user.uuid, reg["queue"]["queue_name"], ["create", "update", "username_set"])
            assert create["offering_user_uuid"] == ou["uuid"] and create["state"] == "Requested"
            assert create["username"] == "" and create["offering_uuid"] == offering_b.uuid
            assert update["username"] == "stomp-test-1" and update["state"] == "OK"
            assert set(update["changed_fields"]) == {"username", "state"}
            assert username_set["state"] == 5 and username_set["resource_backend_ids"] == []

        # user_b sees the offering user through ISD overlap over REST too.
        async with client(site, user_b.token) as api_b:
            r = await api_b.get("marketplace-offering-users/", params={"offering_uuid": offering_b.uuid})
            assert [x["uuid"] for x in r.json()] == [ou["uuid"]]

        # test_04: clear user_b's managed_isds; only the OFFERING.MANAGER receives.
        async with client(site, site.staff_token) as staff:
            r = await staff.patch(f"users/{user_b.uuid}/", json={"managed_isds": []})
            assert r.status_code == 200 and r.json()["managed_isds"] == []
            r = await staff.patch(f"marketplace-offering-users/{ou['uuid']}/", json={"username": "no-isd-1"})
            assert r.status_code == 200
        await site.publisher.drain()
        update, username_set = await receive(stomps["a"], user_a.uuid, reg_a["queue"]["queue_name"],
                                             ["update", "username_set"])
        assert update["username"] == username_set["username"] == "no-isd-1"
        await asyncio.to_thread(publish_sentinel, user_b.uuid, reg_b["queue"]["queue_name"])
        first = await stomps["b"].next_message(timeout=10)
        assert json.loads(first.body) == {"action": "sentinel"}, f"user_b still received {first.body}"
        await stomps["b"].ack(first)
        async with client(site, user_b.token) as api_b:
            r = await api_b.get("marketplace-offering-users/", params={"offering_uuid": offering_b.uuid})
            assert r.json() == [] and r.headers["X-Result-Count"] == "0"

        # Restore (as the seed does): delivery to user_b resumes.
        async with client(site, site.staff_token) as staff:
            assert (await staff.patch(f"users/{user_b.uuid}/", json={"managed_isds": [ISD]})).status_code == 200
            assert (await staff.patch(f"marketplace-offering-users/{ou['uuid']}/",
                                      json={"username": "restored-1"})).status_code == 200
        for name, user, reg in (("a", user_a, reg_a), ("b", user_b, reg_b)):
            update, _ = await receive(stomps[name], user.uuid, reg["queue"]["queue_name"], ["update", "username_set"])
            assert update["username"] == "restored-1"
    finally:
        for stomp in stomps.values():
            await stomp.close()


async def test_queue_arguments_on_the_broker_equal_waldurs(sim_federation: Federation) -> None:
    site = sim_federation.add_site("b")
    await sim_federation.start()
    offering = site.create_offering(site.create_customer())
    manager = site.create_user("mgr")
    site.add_offering_manager(manager, offering)
    reg = await register(site, manager.token, offering.uuid, "agent")
    async with httpx.AsyncClient(auth=("guest", "guest")) as mgmt:
        r = await mgmt.get(f"{RABBITMQ.management_url}/api/queues/{manager.uuid}/{reg['queue']['queue_name']}")
        assert r.status_code == 200
        queue = r.json()
        r = await mgmt.get(f"{RABBITMQ.management_url}/api/users/{reg['sub']['uuid']}")
        assert r.status_code == 200
        r = await mgmt.get(f"{RABBITMQ.management_url}/api/permissions/{manager.uuid}/{reg['sub']['uuid']}")
        perms = r.json()
    assert queue["arguments"] == QUEUE_ARGUMENTS == {
        "x-message-ttl": 3600000,
        "x-max-length": 10000,
        "x-overflow": "reject-publish-dlx",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "waldur.dlq.messages",
    }
    assert queue["durable"] is True and queue["auto_delete"] is False
    assert (perms["configure"], perms["write"], perms["read"]) == (".*", ".*", ".*")


def amqp_get_all(vhost: str, queue: str, login: str, password: str) -> list[tuple[pika.BasicProperties, bytes]]:
    params = pika.ConnectionParameters("127.0.0.1", RABBITMQ.amqp_port, vhost, pika.PlainCredentials(login, password))
    out = []
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))


async def test_consumer_queue_style_and_amqp_headers(sim_federation: Federation) -> None:
    """The second queue style: one consumer_{uuid} queue, object_type in the payload;
    read over AMQP with the subscription's credentials (login uuid, password token)."""
    site = sim_federation.add_site("b")
    await sim_federation.start()
    offering = site.create_offering(site.create_customer(), type="Marketplace.Basic")
    manager = site.create_user("mgr")
    site.add_offering_manager(manager, offering)
    async with client(site, manager.token) as api:
        identity = (await api.post("marketplace-site-agent-identities/",
                                   json={"offering": offering.uuid, "name": "agent"})).json()
        r = await api.post(f"marketplace-site-agent-identities/{identity['uuid']}/register_queue/",
                           json={"object_types": ["offering_user"]})
        assert r.status_code == 201, r.text
        reg = r.json()
    assert reg["queue_name"] == f"consumer_{identity['uuid']}" and reg["vhost"] == manager.uuid
    member = site.create_user("member")
    ou = site.create_offering_user(offering, member)
    site.set_username(ou, "m1")  # not Slurm: update only, no username_set
    await site.publisher.drain()
    got = await asyncio.to_thread(amqp_get_all, manager.uuid, reg["queue_name"], reg["rmq_username"], manager.token)
    payloads = [json.loads(body) for _, body in got]
    assert [p["action"] for p in payloads] == ["create", "update"]
    assert all(p["object_type"] == "offering_user" for p in payloads)
    for props, body in got:
        assert props.delivery_mode == 2 and props.content_type == "application/json"
        assert props.headers["x-message-id"] == message_id(manager.uuid, topic_for(reg["queue_name"]), body.decode())


@pytest.mark.parametrize("enabled", [True, False])
async def test_events_switch(sim_federation: Federation, enabled: bool) -> None:
    site = sim_federation.add_site("b", events_enabled=enabled)
    await sim_federation.start()
    offering = site.create_offering(site.create_customer())
    manager = site.create_user("mgr")
    site.add_offering_manager(manager, offering)
    sub = await site.subscribe(manager, offering)
    ou = site.create_offering_user(offering, site.create_user("u"))
    site.set_username(ou, "x")
    await site.publisher.drain()
    got = await asyncio.to_thread(amqp_get_all, sub.vhost, sub.queue, sub.login, sub.passcode)
    assert len(got) == (3 if enabled else 0)
    assert site.suppressed == (0 if enabled else 3)

"""The real generated client (PyPI waldur-api-client) against the simulator: every page
listed, retrieve, PATCH, create, delete, count, subscription calls; every response
parses into the client's models (the client raises if one does not)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlparse

from waldur_api_client import AuthenticatedClient
from waldur_api_client.api.event_subscriptions import event_subscriptions_create_queue
from waldur_api_client.api.marketplace_offering_users import (
    marketplace_offering_users_count,
    marketplace_offering_users_create,
    marketplace_offering_users_destroy,
    marketplace_offering_users_list,
    marketplace_offering_users_partial_update,
    marketplace_offering_users_retrieve,
)
from waldur_api_client.api.marketplace_site_agent_identities import (
    marketplace_site_agent_identities_create,
    marketplace_site_agent_identities_register_event_subscription,
)
from waldur_api_client.models import (
    AgentEventSubscriptionCreateRequest,
    AgentIdentityRequest,
    EventSubscriptionQueueCreateRequest,
    ObservableObjectTypeEnum,
    OfferingUser,
    OfferingUserRequest,
    OfferingUserState,
    PatchedOfferingUserRequest,
)
from waldur_api_client.utils import parse_link_header

from waldursim import SLURM, Federation


async def test_client_lists_every_page_retrieves_and_patches(sim_offline: Federation) -> None:
    site = sim_offline.add_site("a")
    await sim_offline.start()
    offering = site.create_offering(site.create_customer("sp"), type=SLURM)
    manager = site.create_user("manager")
    site.add_offering_manager(manager, offering)
    for i in range(25):
        site.create_offering_user(offering, site.create_user(f"user{i:02d}"), username=f"acc{i:02d}" if i % 3 else "")
    client = AuthenticatedClient(base_url=site.origin, token=manager.token)

    # Every page at page_size 10, following the Link header as the client's own helpers do.
    pages, seen = 0, []
    page: int | None = 1
    while page is not None:
        response = await marketplace_offering_users_list.asyncio_detailed(
            client=client, offering_uuid=[offering.uuid], page=page, page_size=10)
        assert response.status_code == 200
        assert all(isinstance(x, OfferingUser) for x in response.parsed)
        seen += response.parsed
        pages += 1
        nxt = parse_link_header(response.headers.get("Link", "")).get("next")
        page = int(parse_qs(urlparse(nxt).query)["page"][0]) if nxt else None
    assert pages == 3 and len({x.uuid for x in seen}) == 25
    assert {x.user_username for x in seen} == {f"user{i:02d}" for i in range(25)}

    # The client's all-pages helper (page_size 100 + Link), sync, as the site agent calls it.
    everything = await asyncio.to_thread(
        marketplace_offering_users_list.sync_all, client=client, offering_uuid=[offering.uuid],
        state=[OfferingUserState.OK, OfferingUserState.REQUESTED])
    assert len(everything) == 25
    ok = await marketplace_offering_users_list.asyncio_all(client=client, offering_uuid=[offering.uuid],
                                                           state=[OfferingUserState.OK], is_restricted=False)
    assert len(ok) == 16 and all(x.state == OfferingUserState.OK for x in ok)
    count = await marketplace_offering_users_count.asyncio(client=client, offering_uuid=[offering.uuid])
    assert count == 25

    # Retrieve and PATCH with UUID objects (the client sends them dashed).
    target = next(x for x in seen if x.state == OfferingUserState.REQUESTED)
    got = await marketplace_offering_users_retrieve.asyncio(uuid=target.uuid, client=client)
    assert isinstance(got, OfferingUser) and got.uuid == target.uuid and got.username == ""
    patched = await marketplace_offering_users_partial_update.asyncio(
        uuid=target.uuid, client=client, body=PatchedOfferingUserRequest(username="newname"))
    assert patched.username == "newname" and patched.state == OfferingUserState.OK
    again = await asyncio.to_thread(marketplace_offering_users_partial_update.sync, uuid=target.uuid,
                                    client=client, body=PatchedOfferingUserRequest(username="newname"))
    assert again.modified == patched.modified  # same value: a no-op

    # Create (hyperlinked user/offering) and delete.
    extra = site.create_user("extra")
    created = await marketplace_offering_users_create.asyncio(client=client, body=OfferingUserRequest(
        user=f"{site.url}users/{extra.uuid}/", offering=f"{site.url}marketplace-public-offerings/{offering.uuid}/"))
    assert isinstance(created, OfferingUser) and created.state == OfferingUserState.REQUESTED
    deleted = await marketplace_offering_users_destroy.asyncio_detailed(uuid=created.uuid, client=client)
    assert deleted.status_code == 204


async def test_client_subscription_calls_parse(sim_federation: Federation) -> None:
    site = sim_federation.add_site("b")
    await sim_federation.start()
    offering = site.create_offering(site.create_customer("sp"), type=SLURM)
    manager = site.create_user("manager")
    site.add_offering_manager(manager, offering)
    client = AuthenticatedClient(base_url=site.origin, token=manager.token)
    identity = await marketplace_site_agent_identities_create.asyncio(
        client=client, body=AgentIdentityRequest(offering=offering.uuid, name="agent"))
    assert identity.offering.hex == offering.uuid
    sub = await marketplace_site_agent_identities_register_event_subscription.asyncio(
        uuid=identity.uuid, client=client,
        body=AgentEventSubscriptionCreateRequest(observable_object_type=ObservableObjectTypeEnum.OFFERING_USER))
    assert sub.user_uuid.hex == manager.uuid
    queue = await event_subscriptions_create_queue.asyncio(
        uuid=sub.uuid, client=client,
        body=EventSubscriptionQueueCreateRequest(offering_uuid=offering.uuid,
                                                 object_type=ObservableObjectTypeEnum.OFFERING_USER))
    assert queue.vhost == manager.uuid
    assert queue.queue_name == f"subscription_{sub.uuid.hex}_offering_{offering.uuid}_offering_user"

"""Register usync as a Waldur event subscriber and learn its broker credentials.

Waldur's flow: a site-agent identity per offering, one
event subscription per user and object type (shared across offerings), one queue per
offering. The broker login is the subscription uuid, the passcode the API token, the
vhost the subscriber's user uuid. Every call waits for a token of the site's registration
bucket (``streams.adapters.budget.registration_bucket``): the site's ``rates`` are its
budget for the bridges and the workers together.
"""

from __future__ import annotations

import logging

import httpx

from streams.adapters.budget import TokenBucket, registration_bucket
from streams.adapters.tls import site_api_context, tls_reason
from streams.contract.config import Secret, Site
from streams.errors import TransientError

from bridges.relay import Credential

log = logging.getLogger("usync.bridge.registration")
OBJECT_TYPE = "offering_user"


class RegistrationError(TransientError):
    """Waldur refused or did not answer a registration step; the message names the step,
    never the token. Retried: the API may come back, an operator may fix the permissions."""


def _check(response: httpx.Response, step: str) -> dict:
    if response.status_code not in (200, 201):
        raise RegistrationError(f"{step}: HTTP {response.status_code} from {response.request.url.copy_with(query=None)}")
    return response.json()


async def _identity(client: httpx.AsyncClient, offering: str, name: str) -> str:
    existing = await client.get("marketplace-site-agent-identities/", params={"offering_uuid": offering, "name": name})
    if existing.status_code == 200 and existing.json():
        return existing.json()[0]["uuid"]
    created = await client.post("marketplace-site-agent-identities/", json={"offering": offering, "name": name})
    return _check(created, "create site-agent identity")["uuid"]


async def register(site_name: str, site: Site, token: Secret, offerings: list[str],
                   bucket: TokenBucket | None = None) -> list[Credential]:
    """Identities, subscription and queues for ``offerings``; one credential per subscription.
    ``bucket`` paces the calls (keep one per site across registrations; default: a new one)."""
    try:
        return await _register(site_name, site, token, offerings, bucket or registration_bucket(site.rates))
    except httpx.HTTPError as exc:  # mapped at the adapter: the API away or too slow
        tls = tls_reason(exc)
        detail = f"TLS handshake refused: {tls}" if tls else type(exc).__name__
        raise RegistrationError(f"{detail} from {site.api_url}") from exc


async def _register(site_name: str, site: Site, token: Secret, offerings: list[str],
                    bucket: TokenBucket) -> list[Credential]:
    headers = {"Authorization": f"Token {token.reveal()}"}
    by_subscription: dict[str, Credential] = {}

    async def paced(_request: httpx.Request) -> None:
        await bucket.acquire()
    async with httpx.AsyncClient(base_url=site.api_url, headers=headers, timeout=site.rates.timeout,
                                 verify=site_api_context(site), event_hooks={"request": [paced]}) as client:
        for offering in offerings:
            identity = await _identity(client, offering, site.agent_name)
            subscription = _check(
                await client.post(
                    f"marketplace-site-agent-identities/{identity}/register_event_subscription/",
                    json={"observable_object_type": OBJECT_TYPE},
                ),
                "register event subscription",
            )
            queue = _check(
                await client.post(
                    f"event-subscriptions/{subscription['uuid']}/create_queue/",
                    json={"offering_uuid": offering, "object_type": OBJECT_TYPE},
                ),
                "create queue",
            )
            credential = by_subscription.setdefault(
                subscription["uuid"],
                Credential(login=subscription["uuid"], passcode=token, vhost=queue.get("vhost") or subscription["user_uuid"], queues=[]),
            )
            if queue["queue_name"] not in credential.queues:
                credential.queues.append(queue["queue_name"])
            if offering not in credential.offerings:
                credential.offerings.append(offering)
    log.info("%s: registered %d queues under %d subscriptions", site_name, len(offerings), len(by_subscription))
    return list(by_subscription.values())

"""Sites and federations: the public Python API of the simulator.

    async with Federation() as sim:          # local RabbitMQ as guest by default
        b = sim.add_site("b"); await sim.start()
        ...

A Site owns its state (Store), its HTTP server, its event publisher, its faults and
its call log. It routes every offering-user save to the queues of the subscribers that
would receive it in Waldur, applying event faults on the way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections import deque
from contextlib import AbstractContextManager
from typing import Any, Iterable, Literal

import msgspec
from aiohttp import web

from . import events
from .broker import BrokerAdmin, BrokerError, ManagementClient
from .calls import CallLog
from .eventlog import EventLog
from .faults import FaultInjector, Faults
from .models import (
    OFFERING_USER,
    PROJECT_MEMBER,
    SLURM,
    Customer,
    EventSubscription,
    Offering,
    OfferingUser,
    OfferingUserState,
    Project,
    Resource,
    User,
)
from .publisher import Publisher
from .rest import Api
from .store import Ref, Store, ref

log = logging.getLogger(__name__)


class Outgoing(msgspec.Struct, kw_only=True):
    """One routed message and the event fault applied to it (None = sent as is)."""

    time: float
    message: events.Message
    fault: str | None


class Subscription(msgspec.Struct, kw_only=True):
    """Everything a consumer needs to read one queue (what the REST calls hand out)."""

    subscription_uuid: str
    queue: str
    vhost: str
    login: str  # broker username: the subscription uuid
    passcode: str  # the user's API token

    @property
    def destination(self) -> str:
        return events.topic_for(self.queue)


class Site:
    def __init__(
        self,
        name: str,
        *,
        broker: BrokerAdmin | None,
        publish_rate: float = 500.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        events_enabled: bool = True,
        outgoing_log_size: int = 100_000,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        #: Server-side TLS context: the API is served over https:// with it (None: http://).
        self.tls = tls
        self.broker = broker
        self.store = Store(emit=self._route)
        self.faults = FaultInjector(Faults(seed=seed))
        self.calls = CallLog()
        self.publisher = Publisher(broker, rate=publish_rate, name=name)
        #: False: saves change state but publish nothing (mismatches without events).
        self.events_enabled = events_enabled
        #: Every routed message with its fault decision, newest last.
        self.outgoing: deque[Outgoing] = deque(maxlen=outgoing_log_size)
        self.suppressed = 0  # messages not routed because events were disabled
        self.staff = self.store.create_user("staff", is_staff=True, full_name="Staff")
        self._drift_rng = random.Random(f"{seed}:drift")
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._mgmt: ManagementClient | None = None
        self._ready_subscriptions: set[str] = set()
        self.provisioned_vhosts: set[str] = set()
        self.provisioned_users: set[str] = set()

    # -- addresses -------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`, `https://` when served with TLS (the generated client's base_url)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base, `http://127.0.0.1:PORT/api/`."""
        return f"{self.origin}/api/"

    @property
    def admin_url(self) -> str:
        return f"{self.origin}/_sim/"

    @property
    def staff_token(self) -> str:
        return self.staff.token

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
        if self.broker is not None:
            self._mgmt = self.broker.client()
        await self._listen()
        self.publisher.start()

    async def _listen(self) -> None:
        runner = web.AppRunner(Api(self).app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock, ssl_context=self.tls).start()
        self._runner = runner

    async def restart_listener(self, tls: ssl.SSLContext | None) -> None:
        """Serve the API again on the same port with another TLS context (a certificate
        swapped at run time); state, publisher and broker provisioning are kept. A site
        not started yet only takes the context for its start."""
        if self._runner is None:
            self.tls = tls
            return
        await self._runner.cleanup()
        self._runner = None
        self.tls = tls
        await self._listen()

    async def stop(self, *, cleanup_broker: bool = True) -> None:
        """Stop serving and publishing; delete what this site created on the broker."""
        if self._stopping is not None:
            self._stopping.set()  # releases hanging "timeout" faults
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.publisher.stop)
        if self._mgmt is not None:
            if cleanup_broker:
                await self.cleanup_broker()
            await self._mgmt.aclose()
            self._mgmt = None

    async def cleanup_broker(self) -> None:
        assert self._mgmt is not None
        for vhost in sorted(self.provisioned_vhosts):
            try:
                await self._mgmt.delete_vhost(vhost)
            except BrokerError as exc:
                log.warning("site %s: could not delete vhost %s: %s", self.name, vhost, exc)
        for user in sorted(self.provisioned_users):
            try:
                await self._mgmt.delete_user(user)
            except BrokerError as exc:
                log.warning("site %s: could not delete broker user %s: %s", self.name, user, exc)
        self.provisioned_vhosts.clear()
        self.provisioned_users.clear()
        self._ready_subscriptions.clear()

    async def pause(self, seconds: float) -> None:
        """Sleep, but end early when the site stops (so hung requests do not block it)."""
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- broker provisioning (as Waldur does on subscription and queue creation) ------------

    async def provision_subscription(self, sub: EventSubscription) -> None:
        if self._mgmt is None or sub.uuid in self._ready_subscriptions:
            return
        user = self.store.users[sub.user]
        vhost = user.uuid
        self.provisioned_vhosts.add(vhost)
        self.provisioned_users.add(sub.uuid)
        await self._mgmt.ensure_vhost(vhost)
        await self._mgmt.ensure_user(sub.uuid, user.token)
        await self._mgmt.grant(vhost, sub.uuid)
        # The publisher's own account must be able to publish into every subscriber vhost.
        await self._mgmt.grant(vhost, self._mgmt.admin.username)
        self._ready_subscriptions.add(sub.uuid)

    async def provision_queue(self, vhost: str, name: str) -> None:
        if self._mgmt is None:
            return
        self.provisioned_vhosts.add(vhost)
        await self._mgmt.declare_queue(vhost, name)

    async def subscribe(
        self,
        user: Ref,
        offering: Ref,
        *,
        style: Literal["subscription", "consumer"] = "subscription",
        identity_name: str | None = None,
    ) -> Subscription:
        """The Python shortcut for the three REST calls a consumer makes (same effects)."""
        u, off = self.store.user(user), self.store.offering(offering)
        identity = next((i for i in self.store.identities.values()
                         if i.offering == off.uuid and i.name == (identity_name or f"agent-{u.username}")), None)
        if identity is None:
            identity = self.store.create_identity(u, off, identity_name or f"agent-{u.username}")
        sub, _ = self.store.subscription_for(u, OFFERING_USER)
        await self.provision_subscription(sub)
        if style == "consumer":
            identity.consumer_queue = f"consumer_{identity.uuid}"
            identity.consumer_user = u.uuid
            identity.consumer_object_types = sorted(set(identity.consumer_object_types) | {OFFERING_USER})
            await self.provision_queue(u.uuid, identity.consumer_queue)
            queue = identity.consumer_queue
        else:
            name = self.store.queue_name(sub, off.uuid, OFFERING_USER)
            await self.provision_queue(u.uuid, name)
            queue = self.store.queue_for(sub, off, OFFERING_USER)[0].name
        return Subscription(subscription_uuid=sub.uuid, queue=queue, vhost=u.uuid, login=sub.uuid, passcode=u.token)

    # -- event routing ---------------------------------------------------------------------

    def _route(self, ou: OfferingUser, payload: dict[str, Any]) -> None:
        s = self.store
        payload = events.envelope(payload)
        messages: list[events.Message] = []
        for sub in s.subscriptions.values():
            if sub.object_type != OFFERING_USER:
                continue
            key = s.queue_by_key.get((sub.uuid, ou.offering, OFFERING_USER))
            if key is None or not s.receives_events(s.users[sub.user], ou):
                continue
            q = s.queues[key]
            messages.append(events.build_message(q.vhost, q.name, payload))
        for identity in s.identities.values():
            if (identity.consumer_queue is None or identity.offering != ou.offering
                    or OFFERING_USER not in identity.consumer_object_types or identity.consumer_user is None):
                continue
            if s.receives_events(s.users[identity.consumer_user], ou):
                messages.append(events.build_message(identity.consumer_user, identity.consumer_queue, payload))
        if not self.events_enabled:
            self.suppressed += len(messages)
            return
        for message in messages:
            fault = self.faults.event_fault()
            self.outgoing.append(Outgoing(time=time.time(), message=message, fault=fault))
            if fault == "drop":
                continue
            if fault == "delay":
                self.publisher.submit(message, delay=self.faults.faults.delay_seconds)
                continue
            self.publisher.submit(message)
            if fault == "duplicate":
                self.publisher.submit(message)

    # -- entities (thin wrappers over the store, for a typed, discoverable API) ------------

    def create_user(self, username: str, **fields: Any) -> User:
        """fields: token, is_staff, is_identity_manager, managed_isds, active_isds, full_name, email, …"""
        return self.store.create_user(username, **fields)

    def update_user(self, user: Ref, **changes: Any) -> User:
        return self.store.update_user(user, **changes)

    def create_customer(self, name: str = "customer", *, owners: Iterable[Ref] = ()) -> Customer:
        return self.store.create_customer(name, owners=owners)

    def add_customer_owner(self, user: Ref, customer: Ref) -> None:
        self.store.add_customer_owner(user, customer)

    def create_project(self, customer: Ref, name: str = "project") -> Project:
        return self.store.create_project(customer, name)

    def create_offering(self, customer: Ref, name: str = "offering", *, type: str = SLURM,
                        exposed_attributes: Iterable[str] | None = None) -> Offering:
        """exposed_attributes: the User fields events carry in `attributes` (default: Waldur's
        username, full_name, email)."""
        return self.store.create_offering(customer, name, type=type, exposed_attributes=exposed_attributes)

    def set_exposed_attributes(self, offering: Ref, fields: Iterable[str]) -> None:
        self.store.set_exposed_attributes(offering, fields)

    def create_resource(self, offering: Ref, project: Ref, name: str = "resource",
                        *, backend_id: str | None = None) -> Resource:
        return self.store.create_resource(offering, project, name, backend_id=backend_id)

    def terminate_resource(self, resource: Ref) -> Resource:
        """The resource leaves `resource_backend_ids` (its offering users stay)."""
        return self.store.terminate_resource(resource)

    def add_project_member(self, user: Ref, project: Ref, role: str = PROJECT_MEMBER) -> list[OfferingUser]:
        return self.store.add_project_member(user, project, role)

    def add_offering_manager(self, user: Ref, offering: Ref) -> None:
        self.store.add_offering_manager(user, offering)

    def create_offering_user(self, offering: Ref, user: Ref, *, username: str | None = "",
                             state: OfferingUserState | None = None, emit: bool = True) -> OfferingUser:
        return self.store.create_offering_user(offering, user, username=username, state=state, emit=emit)

    def offering_user(self, offering_user: Ref) -> OfferingUser:
        return self.store.offering_user(offering_user)

    def find_offering_user(self, offering: Ref, user: Ref) -> OfferingUser | None:
        return self.store.find_offering_user(offering, user)

    def offering_users(self, offering: Ref) -> list[OfferingUser]:
        return self.store.offering_users_of(offering)

    def set_username(self, offering_user: Ref, username: str | None) -> OfferingUser:
        """As a PATCH would: events (update, then username_set on Slurm)."""
        return self.store.set_username(offering_user, username)

    def update_offering_user(self, offering_user: Ref, **changes: Any) -> OfferingUser:
        return self.store.update_offering_user(offering_user, **changes)

    def delete_offering_user(self, offering_user: Ref) -> OfferingUser:
        return self.store.delete_offering_user(offering_user)

    def bulk(self) -> AbstractContextManager[None]:
        """``with site.bulk(): ...``: saves as Waldur's bulk paths make them (import, cleanup):
        no broker message and no event-log record."""
        return self.store.side_effects_skipped()

    @property
    def event_log(self) -> EventLog:
        """Waldur's audit log (``GET /api/events/``); ``.logged_types = OLDER_WALDUR`` makes
        this site a Waldur that logs only creations and deletions."""
        return self.store.event_log

    def drift_username(self, offering_user: Ref, username: str | None) -> OfferingUser:
        """Change a username without any event (drift) and without an event-log record."""
        return self.store.drift_username(offering_user, username)

    def drift(self, offering: Ref, count: int = 1, *, prefix: str = "drift-") -> list[OfferingUser]:
        """Drift `count` randomly chosen (seeded) offering users of an offering."""
        pool = self.store.offering_users_of(offering)
        chosen = self._drift_rng.sample(pool, min(count, len(pool)))
        return [self.store.drift_username(ou, f"{prefix}{self._drift_rng.getrandbits(32):08x}") for ou in chosen]

    def info(self, include_users: bool = True) -> dict[str, Any]:
        s = self.store
        data: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "admin_url": self.admin_url,
            "staff_token": self.staff_token,
            "offerings": [
                {"uuid": o.uuid, "name": o.name, "type": o.type, "customer_uuid": o.customer,
                 "offering_users": len(s.ou_by_offering.get(o.uuid, ()))}
                for o in s.offerings.values()
            ],
        }
        if include_users:
            data["users"] = [
                {"username": u.username, "uuid": u.uuid, "token": u.token, "is_staff": u.is_staff}
                for u in s.users.values()
            ]
        return data


class Federation:
    """Several sites on one broker. `rabbitmq=None` means the local broker as guest;
    `broker_enabled=False` runs without any broker (events are routed and logged in
    `site.outgoing`, but not published)."""

    def __init__(
        self,
        rabbitmq: BrokerAdmin | None = None,
        *,
        broker_enabled: bool = True,
        seed: int = 0,
        publish_rate: float = 500.0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.broker: BrokerAdmin | None = (rabbitmq or BrokerAdmin.local()) if broker_enabled else None
        self.tls = tls  # every site's API over https:// with this server context (None: http://)
        self.seed = seed
        self.publish_rate = publish_rate
        self.host = host
        self.sites: dict[str, Site] = {}

    def add_site(
        self,
        name: str,
        *,
        port: int = 0,
        publish_rate: float | None = None,
        seed: int | None = None,
        events_enabled: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> Site:
        if name in self.sites:
            raise ValueError(f"site {name!r} exists")
        site = Site(
            name, broker=self.broker, host=self.host, port=port,
            publish_rate=self.publish_rate if publish_rate is None else publish_rate,
            seed=self.seed + len(self.sites) if seed is None else seed,
            events_enabled=events_enabled, tls=tls or self.tls,
        )
        self.sites[name] = site
        return site

    def __getitem__(self, name: str) -> Site:
        return self.sites[name]

    async def check_broker(self) -> None:
        """Raise BrokerError if the management API cannot be reached."""
        if self.broker is not None:
            client = self.broker.client()
            try:
                await client.ping()
            finally:
                await client.aclose()

    async def start(self) -> None:
        """Start every site not yet running (call again after adding sites)."""
        for site in self.sites.values():
            await site.start()

    async def drain(self, timeout: float = 30.0) -> None:
        """Await every site's publisher."""
        await asyncio.gather(*(s.publisher.drain(timeout) for s in self.sites.values()))

    async def stop(self, *, cleanup_broker: bool = True) -> None:
        for site in self.sites.values():
            await site.stop(cleanup_broker=cleanup_broker)

    async def __aenter__(self) -> "Federation":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = ["Federation", "Site", "Subscription", "Outgoing", "ref"]

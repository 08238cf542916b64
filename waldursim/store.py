"""One site's state in memory: entities, Waldur's visibility rules and the saves that
emit offering-user events.

Every save of an offering user calls `emit(offering_user, payload)` once per message
Waldur would publish for it (the site routes each to its recipients' queues). All
mutations run on the event loop's thread; nothing here blocks or does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from . import events, eventlog
from .models import (
    DISPLAY,
    OFFERING_USER,
    EXPOSABLE_FIELDS,
    PROFILE_FIELDS,
    PROJECT_MEMBER,
    SLURM,
    TERMINATED,
    AgentIdentity,
    AgentService,
    Customer,
    EventSubscription,
    Offering,
    OfferingUser,
    OfferingUserState,
    Project,
    Resource,
    SubscriptionQueue,
    User,
    new_token,
    new_uuid,
    norm_uuid,
    now,
)


class SimError(Exception):
    """An error with the HTTP status and body Waldur would answer."""

    status = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail

    def body(self) -> Any:
        return self.detail if isinstance(self.detail, (dict, list)) else {"detail": self.detail}


class ValidationError(SimError):
    status = 400


class NotAuthenticated(SimError):
    status = 401


class PermissionDenied(SimError):
    status = 403


class NotFound(SimError):
    status = 404

    def __init__(self, detail: Any = "Not found.") -> None:
        super().__init__(detail)


class HasUuid(Protocol):
    uuid: str


Ref = str | HasUuid
Emit = Callable[[OfferingUser, dict[str, Any]], None]

# Auto-created offering users are restored from these states instead of duplicated.
_RESTORABLE = {OfferingUserState.DELETED, OfferingUserState.REQUESTED_DELETION, OfferingUserState.DELETING}


def ref(value: Ref) -> str:
    """An entity or a uuid string (hex or dashed) -> 32-hex uuid."""
    if isinstance(value, str):
        hexed = norm_uuid(value)
        if hexed is None:
            raise NotFound(f"{value!r} is not a UUID")
        return hexed
    return value.uuid


class Store:
    def __init__(self, emit: Emit | None = None) -> None:
        self.emit: Emit = emit or (lambda ou, payload: None)
        self.users: dict[str, User] = {}
        self.users_by_token: dict[str, User] = {}
        self.users_by_username: dict[str, User] = {}
        self.customers: dict[str, Customer] = {}
        self.projects: dict[str, Project] = {}
        self.offerings: dict[str, Offering] = {}
        self.resources: dict[str, Resource] = {}
        self.offering_users: dict[str, OfferingUser] = {}
        self.ou_by_pair: dict[tuple[str, str], str] = {}  # (offering, user) -> offering user uuid
        self.ou_by_offering: dict[str, dict[str, None]] = {}  # offering -> ordered set of ou uuids
        self.ou_by_user: dict[str, dict[str, None]] = {}
        self.identities: dict[str, AgentIdentity] = {}
        self.subscriptions: dict[str, EventSubscription] = {}
        self.sub_by_user_type: dict[tuple[str, str], str] = {}
        self.queues: dict[str, SubscriptionQueue] = {}
        self.queue_by_key: dict[tuple[str, str, str], str] = {}  # (subscription, offering, type)
        self.version = 0  # bumped by every change that can alter a listing
        self._seq = itertools.count(1)
        #: Waldur's own audit log (GET /api/events/): see waldursim/eventlog.py.
        self.event_log = eventlog.EventLog()
        #: True inside side_effects_skipped(): saves publish nothing and log nothing.
        self.silent = False

    @contextmanager
    def side_effects_skipped(self) -> Iterator[None]:
        """Saves as Waldur's bulk paths make them (an import, a cleanup): the state changes, but
        neither a broker message nor an event-log record is written."""
        self.silent, before = True, self.silent
        try:
            yield
        finally:
            self.silent = before

    def _publish(self, ou: OfferingUser, payload: dict[str, Any]) -> None:
        if not self.silent:
            self.emit(ou, payload)

    # -- the event log's context fields (LoggableMixin: `<entity>_<field>`) -----------------

    def _log_offering(self, ou: OfferingUser) -> dict[str, Any]:
        offering = self.offerings[ou.offering]
        customer = self.customers.get(offering.customer)
        return {"offering_uuid": offering.uuid, "offering_name": offering.name, "offering_type": offering.type,
                "customer_uuid": offering.customer, "customer_name": customer.name if customer else ""}

    def _log_user(self, prefix: str, user_uuid: str) -> dict[str, Any]:
        user = self.users[user_uuid]
        return {f"{prefix}_uuid": user.uuid, f"{prefix}_username": user.username,
                f"{prefix}_full_name": user.full_name, f"{prefix}_email": user.email}

    def _scopes(self, ou: OfferingUser) -> tuple[str, ...]:
        return (ou.offering, self.offerings[ou.offering].customer)

    def _log_account(self, event_type: str, verb: str, ou: OfferingUser, actor: dict[str, Any] | None) -> None:
        """created / deleted / restriction_updated: the offering user's own log fields."""
        if self.silent:
            return
        user, offering = self.users[ou.user], self.offerings[ou.offering]
        context = {"offering_user_username": ou.username or "", "offering_user_is_restricted": ou.is_restricted,
                   "offering_user_get_state_display": DISPLAY[ou.state],
                   **self._log_offering(ou), **self._log_user("user", ou.user)}
        self.event_log.emit(event_type, f"Account for user {user.username} in offering {offering.name} has been {verb}.",
                            context, self._scopes(ou), actor)

    # -- lookups --------------------------------------------------------------------------

    def _get(self, table: dict[str, Any], value: Ref, what: str) -> Any:
        try:
            return table[ref(value)]
        except KeyError:
            raise NotFound(f"{what} {value if isinstance(value, str) else value.uuid} not found") from None

    def user(self, value: Ref) -> User:
        return self._get(self.users, value, "user")

    def customer(self, value: Ref) -> Customer:
        return self._get(self.customers, value, "customer")

    def project(self, value: Ref) -> Project:
        return self._get(self.projects, value, "project")

    def offering(self, value: Ref) -> Offering:
        return self._get(self.offerings, value, "offering")

    def offering_user(self, value: Ref) -> OfferingUser:
        return self._get(self.offering_users, value, "offering user")

    def find_offering_user(self, offering: Ref, user: Ref) -> OfferingUser | None:
        key = self.ou_by_pair.get((ref(offering), ref(user)))
        return None if key is None else self.offering_users[key]

    def offering_users_of(self, offering: Ref) -> list[OfferingUser]:
        return [self.offering_users[k] for k in self.ou_by_offering.get(ref(offering), ())]

    # -- permissions and visibility ----------------------------------------------------

    def manages_offering(self, user: User, offering: Offering) -> bool:
        """Staff, OFFERING.MANAGER of it, or owner of the customer that provides it."""
        if user.is_staff or user.uuid in offering.managers:
            return True
        customer = self.customers.get(offering.customer)
        return customer is not None and user.uuid in customer.owners

    def isd_overlap(self, manager: User, target_user_uuid: str) -> bool:
        if not manager.is_identity_manager or not manager.managed_isds:
            return False
        target = self.users.get(target_user_uuid)
        return target is not None and not set(manager.managed_isds).isdisjoint(target.active_isds)

    def can_see(self, user: User, ou: OfferingUser) -> bool:
        if ou.user == user.uuid:  # everyone sees their own offering-user records
            return True
        return self.manages_offering(user, self.offerings[ou.offering]) or self.isd_overlap(user, ou.user)

    def can_change(self, user: User, ou: OfferingUser) -> bool:
        return self.manages_offering(user, self.offerings[ou.offering])

    def receives_events(self, user: User, ou: OfferingUser) -> bool:
        """Waldur's recipients: can see the offering as staff/owner/manager, or ISD overlap."""
        return self.manages_offering(user, self.offerings[ou.offering]) or self.isd_overlap(user, ou.user)

    # -- entities ---------------------------------------------------------------------------

    def create_user(
        self,
        username: str,
        *,
        token: str | None = None,
        uuid: str | None = None,
        is_staff: bool = False,
        is_identity_manager: bool = False,
        managed_isds: Iterable[str] = (),
        active_isds: Iterable[str] = (),
        **profile: Any,
    ) -> User:
        if username in self.users_by_username:
            raise ValidationError({"username": ["A user with that username already exists."]})
        user = User(
            uuid=uuid or new_uuid(),
            username=username,
            token=token or new_token(),
            is_staff=is_staff,
            is_identity_manager=is_identity_manager,
            managed_isds=list(managed_isds),
            active_isds=list(active_isds),
            full_name=profile.pop("full_name", username.replace(".", " ").title()),
            email=profile.pop("email", f"{username}@example.org"),
            **profile,
        )
        self.users[user.uuid] = user
        self.users_by_token[user.token] = user
        self.users_by_username[username] = user
        self.version += 1
        return user

    def update_user(self, user: Ref, **changes: Any) -> User:
        """Change fields; changed profile attributes emit attribute_update per offering user."""
        u = self.user(user)
        changed: list[str] = []
        for name, value in changes.items():
            if name not in User.__struct_fields__ or name in ("uuid", "token", "created"):
                raise ValidationError({name: ["This field cannot be changed."]})
            if isinstance(value, (tuple, set)):
                value = list(value)
            if getattr(u, name) != value:
                if name == "username":
                    if value in self.users_by_username:
                        raise ValidationError({"username": ["A user with that username already exists."]})
                    del self.users_by_username[u.username]
                    self.users_by_username[value] = u
                setattr(u, name, value)
                changed.append(name)
        if changed:
            self.version += 1
        self._emit_attribute_updates(u, {name for name in changed if name in PROFILE_FIELDS})
        return u

    def _emit_attribute_updates(self, user: User, changed: set[str]) -> None:
        """Like Waldur: one attribute_update per offering user of an offering that exposes at
        least one changed profile attribute, `changed_attributes` = those it exposes, sorted."""
        if not changed:
            return
        for ou in [self.offering_users[k] for k in self.ou_by_user.get(user.uuid, ())]:
            exposed = self.offerings[ou.offering].exposed_attributes
            relevant = sorted(changed.intersection(exposed))
            if relevant:
                self._publish(ou, events.attribute_update_payload(ou, user, relevant, exposed))

    def create_customer(self, name: str, *, owners: Iterable[Ref] = ()) -> Customer:
        customer = Customer(uuid=new_uuid(), name=name, owners={ref(o) for o in owners})
        self.customers[customer.uuid] = customer
        self.version += 1
        return customer

    def add_customer_owner(self, user: Ref, customer: Ref) -> None:
        self.customer(customer).owners.add(self.user(user).uuid)
        self.version += 1

    def create_project(self, customer: Ref, name: str = "project") -> Project:
        project = Project(uuid=new_uuid(), name=name, customer=self.customer(customer).uuid)
        self.projects[project.uuid] = project
        return project

    def create_offering(self, customer: Ref, name: str = "offering", *, type: str = SLURM,
                        exposed_attributes: Iterable[str] | None = None) -> Offering:
        offering = Offering(uuid=new_uuid(), name=name, customer=self.customer(customer).uuid, type=type)
        self.offerings[offering.uuid] = offering
        self.ou_by_offering[offering.uuid] = {}
        if exposed_attributes is not None:
            self.set_exposed_attributes(offering, exposed_attributes)
        return offering

    def set_exposed_attributes(self, offering: Ref, fields: Iterable[str]) -> None:
        """The offering's user-attribute config: the User fields its events' `attributes` carry."""
        fields = tuple(fields)
        unknown = set(fields) - set(EXPOSABLE_FIELDS)
        if unknown:
            raise ValidationError({"exposed_fields": [f"Unknown fields: {sorted(unknown)}"]})
        self.offering(offering).exposed_attributes = fields

    def add_offering_manager(self, user: Ref, offering: Ref) -> None:
        self.offering(offering).managers.add(self.user(user).uuid)
        self.version += 1

    def remove_offering_manager(self, user: Ref, offering: Ref) -> None:
        self.offering(offering).managers.discard(self.user(user).uuid)
        self.version += 1

    def create_resource(
        self, offering: Ref, project: Ref, name: str = "resource", *, backend_id: str | None = None
    ) -> Resource:
        off, proj = self.offering(offering), self.project(project)
        resource = Resource(
            uuid=new_uuid(), name=name, offering=off.uuid, project=proj.uuid,
            backend_id=backend_id if backend_id is not None else f"{name}-{len(self.resources) + 1}",
        )
        self.resources[resource.uuid] = resource
        for member in list(proj.members):  # existing members gain access to the offering
            self._auto_create(off, member)
        return resource

    def add_project_member(self, user: Ref, project: Ref, role: str = PROJECT_MEMBER) -> list[OfferingUser]:
        """Grant a project role; like Waldur's role_granted handler, create (or restore) an
        offering user in Requested with an empty username for every offering that has a
        resource in the project. Returns the offering users created or restored."""
        u, proj = self.user(user), self.project(project)
        proj.members[u.uuid] = role
        touched = []
        for offering_uuid in dict.fromkeys(r.offering for r in self.resources.values() if r.project == proj.uuid):
            ou = self._auto_create(self.offerings[offering_uuid], u.uuid)
            if ou is not None:
                touched.append(ou)
        return touched

    def _auto_create(self, offering: Offering, user_uuid: str) -> OfferingUser | None:
        existing = self.find_offering_user(offering.uuid, user_uuid)
        if existing is None:
            return self.create_offering_user(offering, user_uuid)
        if existing.state in _RESTORABLE:
            return self.update_offering_user(existing, state=OfferingUserState.REQUESTED)
        return None

    def terminate_resource(self, resource: Ref) -> Resource:
        res = self._get(self.resources, resource, "resource")
        res.state = TERMINATED
        self.version += 1
        return res

    def resource_backend_ids(self, ou: OfferingUser) -> list[str]:
        """The user's resources in the offering, as Waldur lists them in username_set: without
        empty backend ids and without terminated resources."""
        return [
            r.backend_id for r in self.resources.values()
            if r.offering == ou.offering and r.backend_id and r.state != TERMINATED
            and ou.user in self.projects[r.project].members
        ]

    # -- offering users: every save emits -------------------------------------------------

    def create_offering_user(
        self,
        offering: Ref,
        user: Ref,
        *,
        username: str | None = "",
        state: OfferingUserState | None = None,
        is_restricted: bool = False,
        emit: bool = True,
        actor: dict[str, Any] | None = None,
    ) -> OfferingUser:
        off, u = self.offering(offering), self.user(user)
        if (off.uuid, u.uuid) in self.ou_by_pair:
            raise ValidationError({"non_field_errors": ["The fields offering, user must make a unique set."]})
        if state is None:
            state = OfferingUserState.OK if username else OfferingUserState.REQUESTED
        ou = OfferingUser(
            uuid=new_uuid(), offering=off.uuid, user=u.uuid, username=username, state=state,
            is_restricted=is_restricted, seq=next(self._seq),
        )
        self.offering_users[ou.uuid] = ou
        self.ou_by_pair[(off.uuid, u.uuid)] = ou.uuid
        self.ou_by_offering[off.uuid][ou.uuid] = None
        self.ou_by_user.setdefault(u.uuid, {})[ou.uuid] = None
        self.version += 1
        if emit:  # emit=False: loaded as a bulk import is (no message, no log)
            self._publish(ou, events.create_payload(ou, u, off.exposed_attributes))
            if username and off.type == SLURM:
                self._publish(ou, events.username_set_payload(ou, self.resource_backend_ids(ou)))
            self._log_account(eventlog.CREATED, "created", ou, actor)
        return ou

    def set_username(self, offering_user: Ref, username: str | None, *, actor: dict[str, Any] | None = None) -> OfferingUser:
        """What a PATCH of `username` does: same value is a no-op (no save, no event);
        otherwise Requested/Creating move to OK, `update` is emitted, then on
        Marketplace.Slurm `username_set` if the new username is non-empty."""
        ou = self.offering_user(offering_user)
        if ou.username == username:
            return ou
        changed = ["username"]
        old, ou.username = ou.username, username
        if username and ou.state in (OfferingUserState.REQUESTED, OfferingUserState.CREATING):
            ou.state = OfferingUserState.OK
            changed.append("state")
        ou.modified = now()
        self.version += 1
        self._publish(ou, events.update_payload(ou, changed))
        if username and self.offerings[ou.offering].type == SLURM:
            self._publish(ou, events.username_set_payload(ou, self.resource_backend_ids(ou)))
        if not self.silent:
            eventlog.username_updated(self.event_log, ou.uuid, old, username, self._log_offering(ou),
                                      self._log_user("affected_user", ou.user), self._scopes(ou), actor)
        return ou

    def update_offering_user(self, offering_user: Ref, *, actor: dict[str, Any] | None = None,
                             **changes: Any) -> OfferingUser:
        """Change state / runtime_state / is_restricted (one save, one `update`)."""
        ou = self.offering_user(offering_user)
        changed = []
        for name, value in changes.items():
            if name == "username":
                raise ValidationError("use set_username() for usernames")
            if name not in ("state", "runtime_state", "is_restricted"):
                raise ValidationError({name: ["This field cannot be changed."]})
            if name == "state":
                value = OfferingUserState(value)
            if getattr(ou, name) != value:
                setattr(ou, name, value)
                changed.append(name)
        if changed:
            ou.modified = now()
            self.version += 1
            self._publish(ou, events.update_payload(ou, changed))
            if "is_restricted" in changed:
                self._log_account(eventlog.RESTRICTION_UPDATED, "updated", ou, actor)
        return ou

    def delete_offering_user(self, offering_user: Ref, *, actor: dict[str, Any] | None = None) -> OfferingUser:
        ou = self.offering_user(offering_user)
        del self.offering_users[ou.uuid]
        del self.ou_by_pair[(ou.offering, ou.user)]
        self.ou_by_offering[ou.offering].pop(ou.uuid, None)
        self.ou_by_user.get(ou.user, {}).pop(ou.uuid, None)
        self.version += 1
        self._publish(ou, events.delete_payload(ou))
        self._log_account(eventlog.DELETED, "deleted", ou, actor)
        return ou

    def drift_username(self, offering_user: Ref, username: str | None) -> OfferingUser:
        """Change a username behind everyone's back: no save signal, no event."""
        ou = self.offering_user(offering_user)
        ou.username = username
        ou.modified = now()
        self.version += 1
        return ou

    # -- subscriptions ------------------------------------------------------------------------

    def _check_identity_name(self, offering_uuid: str, name: str, own: str | None = None) -> None:
        for identity in self.identities.values():
            if identity.offering == offering_uuid and identity.name == name and identity.uuid != own:
                raise ValidationError({"name": ["Agent identity with this offering and name already exists."]})

    def create_identity(self, user: User, offering: Ref, name: str, **reported: Any) -> AgentIdentity:
        """`reported`: version, dependencies, config_file_path, config_file_content, last_restarted."""
        off = self.offering(offering)
        self._check_identity_name(off.uuid, name)
        identity = AgentIdentity(uuid=new_uuid(), name=name, offering=off.uuid, created_by=user.uuid, **reported)
        self.identities[identity.uuid] = identity
        return identity

    def update_identity(self, identity: AgentIdentity, **changes: Any) -> AgentIdentity:
        """PUT/PATCH: name, offering and what the agent reports (see create_identity)."""
        offering = self.offering(changes.pop("offering", identity.offering)).uuid
        name = changes.pop("name", identity.name)
        self._check_identity_name(offering, name, own=identity.uuid)
        identity.offering, identity.name = offering, name
        for field, value in changes.items():
            setattr(identity, field, value)
        identity.modified = now()
        return identity

    def register_service(self, identity: AgentIdentity, name: str, mode: str | None) -> tuple[AgentService, bool]:
        """Get or create the identity's service `name` (mode updated); True if created."""
        service = identity.services.get(name)
        if service is not None:
            service.mode, service.modified = mode, now()
            return service, False
        service = AgentService(uuid=new_uuid(), identity=identity.uuid, name=name, mode=mode)
        identity.services[name] = service
        return service, True

    def subscription_for(self, user: User, object_type: str = OFFERING_USER) -> tuple[EventSubscription, bool]:
        """Get or create the user's one subscription for `object_type`; True if created."""
        key = (user.uuid, object_type)
        if key in self.sub_by_user_type:
            return self.subscriptions[self.sub_by_user_type[key]], False
        sub = EventSubscription(uuid=new_uuid(), user=user.uuid, object_type=object_type)
        self.subscriptions[sub.uuid] = sub
        self.sub_by_user_type[key] = sub.uuid
        return sub, True

    @staticmethod
    def queue_name(sub: EventSubscription, offering_uuid: str, object_type: str) -> str:
        return f"subscription_{sub.uuid}_offering_{offering_uuid}_{object_type}"

    def queue_for(self, sub: EventSubscription, offering: Ref, object_type: str) -> tuple[SubscriptionQueue, bool]:
        off = self.offering(offering)
        key = (sub.uuid, off.uuid, object_type)
        if key in self.queue_by_key:
            return self.queues[self.queue_by_key[key]], False
        q = SubscriptionQueue(
            uuid=new_uuid(), subscription=sub.uuid, offering=off.uuid, object_type=object_type,
            name=self.queue_name(sub, off.uuid, object_type), vhost=sub.user,
        )
        self.queues[q.uuid] = q
        self.queue_by_key[key] = q.uuid
        return q, True

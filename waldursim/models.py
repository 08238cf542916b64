"""The simulated Waldur's entities: plain msgspec Structs, mutated in place by the store.

Only what the offering-user API, its visibility rules and its event routing need is
modelled. UUIDs are stored as Waldur renders them: 32 lowercase hex characters.
"""

from __future__ import annotations

import secrets
import uuid as _uuid
from datetime import datetime, timezone
from enum import IntEnum

import msgspec


class OfferingUserState(IntEnum):
    """Waldur's integer states; the API and most events show `DISPLAY[state]`."""

    REQUESTED = 1
    CREATING = 2
    PENDING_ACCOUNT_LINKING = 3
    PENDING_ADDITIONAL_VALIDATION = 4
    OK = 5
    REQUESTED_DELETION = 6
    DELETING = 7
    DELETED = 8
    ERROR_CREATING = 9
    ERROR_DELETING = 10


DISPLAY: dict[OfferingUserState, str] = {
    OfferingUserState.REQUESTED: "Requested",
    OfferingUserState.CREATING: "Creating",
    OfferingUserState.PENDING_ACCOUNT_LINKING: "Pending account linking",
    OfferingUserState.PENDING_ADDITIONAL_VALIDATION: "Pending additional validation",
    OfferingUserState.OK: "OK",
    OfferingUserState.REQUESTED_DELETION: "Requested deletion",
    OfferingUserState.DELETING: "Deleting",
    OfferingUserState.DELETED: "Deleted",
    OfferingUserState.ERROR_CREATING: "Error creating",
    OfferingUserState.ERROR_DELETING: "Error deleting",
}
BY_DISPLAY: dict[str, OfferingUserState] = {v: k for k, v in DISPLAY.items()}

RUNTIME_STATES = ("Active", "Pending account linking", "Pending additional validation")

OFFERING_MANAGER = "OFFERING.MANAGER"
CUSTOMER_OWNER = "CUSTOMER.OWNER"
PROJECT_MEMBER = "PROJECT.MEMBER"

SLURM = "Marketplace.Slurm"
OFFERING_USER = "offering_user"
#: Waldur's dispatcher adds this (and `object_type`) to every event payload.
EVENT_SCHEMA_VERSION = 1
TERMINATED = "Terminated"  # a resource state; terminated resources leave `resource_backend_ids`


def new_uuid() -> str:
    return _uuid.uuid4().hex


def new_token() -> str:
    # DRF tokens are 40 hex characters.
    return secrets.token_hex(20)


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """DRF's rendering: ISO 8601 with a `Z` suffix."""
    return dt.isoformat().replace("+00:00", "Z")


def norm_uuid(value: str) -> str | None:
    """Accept hex or dashed (any case); None if it is not a UUID."""
    try:
        return _uuid.UUID(value.strip()).hex
    except (ValueError, AttributeError):
        return None


class User(msgspec.Struct, kw_only=True):
    uuid: str
    username: str
    token: str
    full_name: str = ""
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    organization: str = ""
    phone_number: str = ""
    job_title: str = ""
    affiliations: list[str] = msgspec.field(default_factory=list)
    is_staff: bool = False
    is_identity_manager: bool = False
    managed_isds: list[str] = msgspec.field(default_factory=list)
    active_isds: list[str] = msgspec.field(default_factory=list)
    created: datetime = msgspec.field(default_factory=now)


# Fields of User an offering can expose to its provider as event "attributes" (its user-attribute
# config, `expose_<field>`); the simulated User has these of Waldur's list.
EXPOSABLE_FIELDS = (
    "username", "full_name", "first_name", "last_name", "email", "organization",
    "phone_number", "job_title", "affiliations",
)
# Waldur's default config (an offering that saved none): expose_username, _full_name, _email.
DEFAULT_EXPOSED = ("username", "full_name", "email")
# The profile attributes whose change emits attribute_update: User.username is not one.
PROFILE_FIELDS = tuple(name for name in EXPOSABLE_FIELDS if name != "username")


class Customer(msgspec.Struct, kw_only=True):
    uuid: str
    name: str
    owners: set[str] = msgspec.field(default_factory=set)  # user uuids


class Project(msgspec.Struct, kw_only=True):
    uuid: str
    name: str
    customer: str  # customer uuid
    members: dict[str, str] = msgspec.field(default_factory=dict)  # user uuid -> role


class Offering(msgspec.Struct, kw_only=True):
    uuid: str
    name: str
    customer: str  # the service provider's customer uuid
    type: str = SLURM
    managers: set[str] = msgspec.field(default_factory=set)  # user uuids
    # The user-attribute config: which User fields events carry in `attributes`.
    exposed_attributes: tuple[str, ...] = DEFAULT_EXPOSED


class Resource(msgspec.Struct, kw_only=True):
    uuid: str
    name: str
    offering: str
    project: str
    backend_id: str = ""
    state: str = "OK"


class OfferingUser(msgspec.Struct, kw_only=True):
    uuid: str
    offering: str  # offering uuid
    user: str  # user uuid
    username: str | None = ""
    state: OfferingUserState = OfferingUserState.REQUESTED
    runtime_state: str = "Active"
    is_restricted: bool = False
    created: datetime = msgspec.field(default_factory=now)
    modified: datetime = msgspec.field(default_factory=now)
    seq: int = 0  # creation order: the default list ordering


class AgentService(msgspec.Struct, kw_only=True):
    """What `register_service` records: one per (identity, name)."""

    uuid: str
    identity: str
    name: str
    mode: str | None = None
    state: str = "Active"
    created: datetime = msgspec.field(default_factory=now)
    modified: datetime = msgspec.field(default_factory=now)


class AgentIdentity(msgspec.Struct, kw_only=True):
    uuid: str
    name: str
    offering: str
    created_by: str
    created: datetime = msgspec.field(default_factory=now)
    modified: datetime = msgspec.field(default_factory=now)
    # What the agent reports about itself on create and on every restart (PUT).
    version: str | None = None
    dependencies: list[dict[str, str]] = msgspec.field(default_factory=list)  # {package, version}
    config_file_path: str | None = None
    config_file_content: str | None = None
    last_restarted: datetime = msgspec.field(default_factory=now)
    services: dict[str, AgentService] = msgspec.field(default_factory=dict)  # by name
    # The second queue style: one `consumer_{uuid}` queue for this identity.
    consumer_queue: str | None = None
    consumer_user: str | None = None  # whose vhost holds the consumer queue
    consumer_object_types: list[str] = msgspec.field(default_factory=list)


class EventSubscription(msgspec.Struct, kw_only=True):
    """One per (user, object type); its uuid is the broker login, its vhost the user uuid."""

    uuid: str
    user: str
    object_type: str
    description: str = ""
    created: datetime = msgspec.field(default_factory=now)
    modified: datetime = msgspec.field(default_factory=now)


class SubscriptionQueue(msgspec.Struct, kw_only=True):
    uuid: str
    subscription: str
    offering: str
    object_type: str
    name: str
    vhost: str
    created: datetime = msgspec.field(default_factory=now)

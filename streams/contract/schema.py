"""The records usync writes to Kafka, as msgspec Structs.

Every inbound fact is an :class:`Envelope` on the events topic; its ``body`` is one of
these kinds, told apart by the ``kind`` tag:

- :class:`OfferingUserEvent`: a Waldur broker message, decoded as Waldur sends it
  (all five actions, unknown extra keys tolerated, ``state`` a display string or the
  integer that ``username_set`` carries);
- :class:`SnapshotPage`: one page of a REST listing taken by the reconciler. Since
  2026-12 listings go to the listings topic (short retention, ``source`` ``listing``)
  and the events topic keeps only what they changed; pages written there before still fold;
- :class:`Listed`: a listed offering user whose listed state differs from what one
  link's table held (``source`` ``reconcile``);
- :class:`Unlisted`: an offering user a link's table held in a listed state that a
  complete listing did not have;
- :class:`ListingSummary`: one per listing (offering, states) and pass: what was listed,
  how many users, a digest; it says the listing is complete as of its ``received_at``;
- :class:`Lookup`: the answer to a single-object GET made on an identity-index miss;
- :class:`Rejection`: Waldur A refused the correct stage's PATCH (a 4xx that is not
  about credentials or a missing object), so the fold can mark the row and the worker
  back off (see ``streams.core.decide``).

Correction attempts are :class:`Outcome` records on the outcomes topic, and messages
that cannot be decoded are :class:`DeadLetter` records on the DLQ topic.

This module is part of the contract: it imports no I/O library, and the bridge
imports it too.
"""

from __future__ import annotations

import enum
import hashlib
import typing
from binascii import unhexlify
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec

SCHEMA_VERSION: Final = 1

Uuid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")]


class OfferingUserState(enum.IntEnum):
    """Waldur's OfferingUser states; the API speaks the display names."""

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

    @property
    def display(self) -> str:
        return _DISPLAY_NAMES[self]


_DISPLAY_NAMES: Final = {
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
_BY_DISPLAY: Final = {name.lower(): state for state, name in _DISPLAY_NAMES.items()}
#: A display name, as is or in lower case -> the display name (``state_display``'s fast path).
_DISPLAY_OF: Final = {**{name.lower(): name for name in _DISPLAY_NAMES.values()},
                      **{name: name for name in _DISPLAY_NAMES.values()}}


def state_display(state: str | int | None) -> str | None:
    """Normalise a state as Waldur sends it (display string or integer) to its display name.

    Unknown values pass through as strings so that a newer Waldur cannot break the fold.
    """
    if type(state) is str:  # as decoded: most are a display name already
        known = _DISPLAY_OF.get(state)
        if known is not None:
            return known
    if state is None:
        return None
    if isinstance(state, int) and not isinstance(state, bool):
        try:
            return OfferingUserState(state).display
        except ValueError:
            return str(state)
    known = _BY_DISPLAY.get(str(state).lower())
    return known.display if known is not None else str(state)


def normalize_uuid(value: str) -> str:
    """Waldur answers with 32 hex characters but accepts the dashed form: store the former."""
    return value.replace("-", "").lower()


class Origin(str, enum.Enum):
    """How a fact reached usync (the envelope's ``source`` field)."""

    STOMP = "stomp"
    AMQP = "amqp"
    SNAPSHOT = "snapshot"
    LOOKUP = "lookup"
    REJECTION = "rejection"
    LISTING = "listing"  # a reconcile listing page, on the listings topic (never the events topic)
    RECONCILE = "reconcile"  # what a reconcile pass found: Listed, Unlisted, ListingSummary


class Action(str, enum.Enum):
    """The actions Waldur publishes (``OfferingUserEvent.action`` stays a plain string:
    an action a newer Waldur adds is relayed and left alone by the fold)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ATTRIBUTE_UPDATE = "attribute_update"
    USERNAME_SET = "username_set"


# Not tracked by the cyclic GC (gc=False, as Envelope and OfferingUserRecord): replay and the
# fold decode one per fact, and nothing one holds can refer back to it. (Docstrings of these
# records are the JSON Schema's descriptions: notes for usync's own readers go here.)
class OfferingUserEvent(msgspec.Struct, kw_only=True, tag="event", tag_field="kind", omit_defaults=True, gc=False):
    """One offering-user message exactly as Waldur publishes it.

    ``action`` stays a plain string: unknown actions are relayed and the fold decides.
    """

    action: str
    offering_user_uuid: Uuid
    user_uuid: Uuid
    offering_uuid: Uuid | None = None
    username: str | None = None
    state: str | int | None = None
    runtime_state: str | None = None
    changed_fields: list[str] | None = None
    attributes: dict[str, Any] | None = None
    changed_attributes: list[str] | None = None
    resource_backend_ids: list[str] | None = None
    object_type: str | None = None  # Waldur's dispatcher adds it to every payload
    schema_version: int | None = None  # Waldur's payload schema (1), kept for audit readers

    @property
    def state_name(self) -> str | None:
        return state_display(self.state)


class OfferingUserRecord(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The fields of a REST offering user that the sync uses."""

    uuid: str
    user_uuid: str
    user_username: str
    offering_uuid: str
    username: str | None = None
    state: str | None = None
    runtime_state: str | None = None
    is_restricted: bool = False
    modified: str | None = None


class SnapshotPage(msgspec.Struct, kw_only=True, tag="snapshot", tag_field="kind", omit_defaults=True):
    """One page of a reconciliation listing of one offering on one site.

    ``states`` is the filter the listing used: a complete snapshot (every page, ending
    with ``last``) says that users absent from it are not in those states.
    """

    snapshot_id: str
    offering_uuid: str
    states: list[str]
    page: int
    last: bool
    total: int
    users: list[OfferingUserRecord]


class Lookup(msgspec.Struct, kw_only=True, tag="lookup", tag_field="kind", omit_defaults=True):
    """A single GET of an offering user, made when the identity index missed.

    ``status`` is the HTTP status; ``user`` is present when it was 200.
    """

    offering_user_uuid: str
    status: int
    user: OfferingUserRecord | None = None


class Rejection(msgspec.Struct, kw_only=True, tag="rejection", tag_field="kind", omit_defaults=True):
    """Site A refused to set ``user_username``'s username on ``link`` to ``desired`` while
    it was ``observed`` (HTTP ``status``); the envelope's ``received_at`` is when the
    PATCH was sent. The refusing answer itself is in the outcome record."""

    link: str
    user_username: str
    offering_user_uuid: str
    desired: str
    observed: str = ""
    status: int


class Listed(msgspec.Struct, kw_only=True, tag="listed", tag_field="kind", omit_defaults=True):
    """A reconcile listing had ``user`` on the envelope's offering differently from what
    ``link``'s table held (``was_*``, for audit readers: null when the table had no such
    user). The envelope's ``received_at`` is when the listing's page was requested."""

    link: str
    snapshot_id: str
    states: list[str]
    user: OfferingUserRecord
    was_username: str | None = None
    was_state: str | None = None


class Unlisted(msgspec.Struct, kw_only=True, tag="unlisted", tag_field="kind", omit_defaults=True):
    """A complete listing in ``states`` did not have ``offering_user_uuid``, which ``link``'s
    table held for ``user_username`` in one of those states (``was_state``). The fold sets
    that side's state to ``Unlisted``: not in a listed state, which one unknown until an
    event or lookup says. The envelope's ``received_at`` is when the listing began."""

    link: str
    snapshot_id: str
    states: list[str]
    offering_user_uuid: str
    user_username: str
    was_username: str | None = None
    was_state: str | None = None


class ListingSummary(msgspec.Struct, kw_only=True, tag="listing", tag_field="kind", omit_defaults=True):
    """One complete listing of an offering in ``states`` (every page): the audit trail of a
    reconcile pass that changed nothing. ``digest``: sha256 over the listed users' uuid,
    user, username, state and restricted flag, in uuid order (``listing_digest``). The
    envelope's ``received_at`` is when the first page was requested: facts observed before
    it about this side of every link of the offering are older than the listing, and the
    fold ignores them when they arrive after it."""

    snapshot_id: str
    offering_uuid: str
    states: list[str]
    pages: int
    total: int
    listed: int
    digest: str
    finished_at: datetime


Body = OfferingUserEvent | SnapshotPage | Lookup | Rejection | Listed | Unlisted | ListingSummary


# Not tracked by the cyclic GC (gc=False): replay and the fold decode one per fact and nothing
# they hold refers back to it; untracked, an update envelope decodes in 0.99 µs instead of 1.25
# (200k of them, the GC as streams.worker.tune_gc sets it, this 2-core box).
class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Every inbound fact, as written to the events topic (key ``<site>:<offering_uuid>``)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    site: str
    origin: Origin = msgspec.field(name="source")
    offering_uuid: str
    object_type: str = "offering_user"
    queue: str = ""
    received_at: datetime
    headers: dict[str, str] = {}
    body: Body

    @property
    def key(self) -> str:
        return event_key(self.site, self.offering_uuid)


class OutcomeAction(str, enum.Enum):
    CORRECTED = "corrected"
    ALREADY_EQUAL = "already-equal"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    GAVE_UP = "gave-up"
    # handling the request raised something that is neither transient nor a decision (a
    # bug, or a site answer that is not what its schema says): the request is on the DLQ
    DEAD_LETTERED = "dead-lettered"


class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One correction attempt, as written to the outcomes topic (key ``<link>:<user_username>``)."""

    schema_version: int = SCHEMA_VERSION
    link: str
    user_username: str
    action: OutcomeAction
    desired: str | None
    observed: str | None
    http_status: int | None = None
    reason: str = ""
    cause_event_id: str = ""
    offering_user_uuid: str = ""
    attempts: int = 1
    at: datetime
    # A refusing site's answer (``rejected``): its body as text, at most 1 KiB, the token
    # masked. Absent on every other outcome, and on records written before it existed.
    response: str | None = None


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message that could not be decoded or routed; kept whole, never dropped.

    The bridge writes broker messages (``site``, ``queue``, broker ``headers``). The worker
    writes Kafka records it cannot use (``topic``, ``partition``, ``offset`` of the poison
    record; ``site`` and ``queue`` empty; ``event_id`` is ``<topic>/<partition>/<offset>``):
    an undecodable record on an internal topic or on the events topic, and a correction
    request whose handling raised. The three fields are optional, so older readers and
    older letters still decode.
    """

    schema_version: int = SCHEMA_VERSION
    event_id: str
    site: str
    queue: str
    reason: str
    raw: bytes  # base64 in JSON
    headers: dict[str, str] = {}
    received_at: datetime
    topic: str = ""
    partition: int = -1
    offset: int = -1


class CorrectionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """"Look at (link, user)": what the fold sends to ``<app>-corrections`` (key ``<link>:<user>``)."""

    link: str
    user_username: str
    a_offering_user_uuid: str | None = None
    b_offering_user_uuid: str | None = None
    desired: str | None = None
    cause_event_id: str = ""
    # When the newest fact behind the request was observed (µs since the epoch): a live
    # read sent after that already covers it.
    observed_at: int = 0
    # When B was read live, if that read is B's newest fact (the row's ``b_read_at``): the
    # request then carries B as read (``desired``, state OK, not restricted).
    b_read_at: int = 0

    @property
    def key(self) -> str:
        return f"{self.link}:{self.user_username}"


class Conclusion(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the fold concluded for a (link, user) after a fact: each side's username and
    state, whether A is in drift, and the username a correction would ask A for."""

    b_username: str | None = None
    b_state: str | None = None
    a_username: str | None = None
    a_state: str | None = None
    drift: bool = False
    asks: str | None = None


class IndexEntry(msgspec.Struct, kw_only=True, tag="entry", tag_field="kind", omit_defaults=True):
    """One fact about ``user`` on the user-index topic (key: the user's ``user_username``):
    where it is (``topic`` is ``events``, ``outcomes`` or ``dlq``), when it was observed, what
    it is (the body's kind, or the outcome's action) and, for an events fact, what the fold
    concluded after it on ``link``."""

    schema_version: int = SCHEMA_VERSION
    user: str
    topic: str
    partition: int
    offset: int
    at: datetime
    what: str
    link: str = ""
    after: Conclusion | None = None


class IndexAlias(msgspec.Struct, kw_only=True, tag="alias", tag_field="kind", omit_defaults=True):
    """``uuid`` (a user_uuid or an offering-user uuid, on ``site``) names ``user`` (key: the uuid)."""

    schema_version: int = SCHEMA_VERSION
    uuid: str
    user: str
    site: str = ""


IndexRecord = IndexEntry | IndexAlias
index_decoder = msgspec.json.Decoder(IndexRecord)


def event_key(site: str, offering_uuid: str) -> str:
    return f"{site}:{offering_uuid}"


def fallback_event_id(site: str, queue: str, body: bytes) -> str:
    """The event id when the broker gave no ``x-message-id``: stable across redeliveries."""
    digest = hashlib.sha256()
    for part in (site.encode(), b"\0", queue.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()[:32]


class PayloadError(ValueError):
    """A broker body that is not a usable offering-user event; the reason goes to the DLQ."""


_payload_decoder = msgspec.json.Decoder(OfferingUserEvent)
envelope_encoder = msgspec.json.Encoder()
envelope_decoder = msgspec.json.Decoder(Envelope)
outcome_decoder = msgspec.json.Decoder(Outcome)
outcome_encoder = msgspec.json.Encoder()
request_encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(CorrectionRequest)
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


# -- decoding without the uuid patterns, where they provably hold ----------------------------
#
# msgspec checks OfferingUserEvent's three uuids against their regex, which costs more than the
# rest of an envelope's decode (1.9 µs an update envelope, 0.85 without the patterns; timeit,
# GC off, this 2-core box). The twins below have the same fields, wire names, defaults and
# config with the patterns left out, so they take everything the checked types take, to the
# same values. A twin's result is kept only when every event in it has the 32 hex digits
# Waldur sends in each uuid, a subset of what the pattern allows (``unhexlify`` is the strict
# check: ASCII hex digits only, no sign, prefix or whitespace); anything else is decoded again
# with the checked types, which give the same value or raise the same error.

_TWIN_OPTIONS: Final = ("tag", "tag_field", "omit_defaults", "forbid_unknown_fields", "array_like", "frozen", "eq",
                        "order", "gc")


def unchecked(struct_type: type[msgspec.Struct], **types: Any) -> Any:
    """``struct_type`` with its constrained field types replaced by their plain types (and
    the fields named in ``types`` by those), its wire names, defaults, config and properties kept."""
    plain = typing.get_type_hints(struct_type)  # Annotated[str, Meta(...)] -> str
    config = struct_type.__struct_config__
    fields: list[Any] = []
    for field in msgspec.structs.fields(struct_type):
        kind = types.get(field.name, plain[field.name])
        rename = {} if field.encode_name == field.name else {"name": field.encode_name}
        if field.required:
            fields.append((field.name, kind, msgspec.field(**rename)) if rename else (field.name, kind))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append((field.name, kind, msgspec.field(default_factory=field.default_factory, **rename)))
        else:
            fields.append((field.name, kind, msgspec.field(default=field.default, **rename)))
    namespace = {name: value for name, value in vars(struct_type).items() if isinstance(value, property)}
    return msgspec.defstruct(f"{struct_type.__name__}Unchecked", fields, kw_only=True, namespace=namespace,
                             module=__name__, **{name: getattr(config, name) for name in _TWIN_OPTIONS})


OfferingUserEventUnchecked: Final = unchecked(OfferingUserEvent)
#: An event body as the fold reads it: checked, or the unchecked twin of a checked-equal one.
EVENT_KINDS: Final = (OfferingUserEvent, OfferingUserEventUnchecked)
_UncheckedBody = OfferingUserEventUnchecked | SnapshotPage | Lookup | Rejection | Listed | Unlisted | ListingSummary
EnvelopeUnchecked: Final = unchecked(Envelope, body=_UncheckedBody)
_unchecked_envelope: Final = msgspec.json.Decoder(EnvelopeUnchecked)
_unchecked_envelopes: Final = msgspec.json.Decoder(list[EnvelopeUnchecked])
_envelopes: Final = msgspec.json.Decoder(list[Envelope])


def uuids_hold(event: Any) -> bool:
    """Every uuid of an (unchecked) event is 32 hex digits: the pattern holds."""
    first, second, offering = event.offering_user_uuid, event.user_uuid, event.offering_uuid
    if offering is None:
        offering = "0" * 32
    if len(first) != 32 or len(second) != 32 or len(offering) != 32:
        return False
    try:
        unhexlify(first + second + offering)  # ASCII hex digits only, or ValueError
    except ValueError:
        return False
    return True


def decode_envelope(raw: bytes) -> Envelope:
    """``envelope_decoder.decode(raw)``, faster: the same envelope (as the twin, on the fast
    path) or the same error."""
    try:
        envelope = _unchecked_envelope.decode(raw)
    except msgspec.DecodeError:
        return envelope_decoder.decode(raw)  # raises the exact reason
    body = envelope.body
    if type(body) is OfferingUserEventUnchecked and not uuids_hold(body):
        return envelope_decoder.decode(raw)
    return envelope  # type: ignore[no-any-return]


def decode_envelopes(raw: bytes) -> list[Envelope]:
    """A JSON array of envelopes, as ``msgspec.json.Decoder(list[Envelope])`` decodes it (see
    :func:`decode_envelope`)."""
    try:
        envelopes = _unchecked_envelopes.decode(raw)
    except msgspec.DecodeError:
        return _envelopes.decode(raw)
    twin = OfferingUserEventUnchecked
    for envelope in envelopes:
        body = envelope.body
        if type(body) is twin and not uuids_hold(body):
            return _envelopes.decode(raw)
    return envelopes  # type: ignore[no-any-return]


def decode_payload(raw: bytes) -> OfferingUserEvent:
    """Decode a broker body, or raise :class:`PayloadError` saying why not."""
    try:
        return _payload_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"invalid offering-user event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None


def listing_digest(users: Any) -> str:
    """The digest of a listing (:class:`ListingSummary`): sha256 over each listed user's
    uuid, user, username, state and restricted flag, sorted by uuid. Two listings with
    the same digest listed the same users in the same states."""
    digest = hashlib.sha256()
    for user in sorted(users, key=lambda u: normalize_uuid(u.uuid)):
        digest.update(msgspec.json.encode((normalize_uuid(user.uuid), user.user_username, user.username or "",
                                           state_display(user.state) or "", user.is_restricted)))
    return digest.hexdigest()


def json_schemas() -> dict[str, Any]:
    """JSON Schema of each topic's record, for audit consumers."""
    from streams.core.checkpoint import CheckpointRecord  # the core's Row: the core imports this module

    return {
        "events": msgspec.json.schema(Envelope),
        "outcomes": msgspec.json.schema(Outcome),
        "dlq": msgspec.json.schema(DeadLetter),
        "listings": msgspec.json.schema(Envelope),
        "checkpoints": msgspec.json.schema(CheckpointRecord),
        "user-index": msgspec.json.schema(IndexRecord),
    }

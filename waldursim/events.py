"""Waldur's offering-user event payloads and message headers, byte for byte.

`topic` in the message id: Waldur hashes `vhost:topic:payload`; the simulator uses the
STOMP destination every consumer subscribes to, `/amq/queue/<queue name>`, as the
topic, and `payload` is the exact JSON text published as the body. Identical content
to the same queue therefore always has the same id, which is what consumers rely on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

from .models import DISPLAY, EVENT_SCHEMA_VERSION, OFFERING_USER, OfferingUser, OfferingUserState, User


class Message(msgspec.Struct, kw_only=True):
    """One message bound for one queue (what the publisher thread sends)."""

    vhost: str
    queue: str
    body: bytes
    message_id: str
    action: str
    offering_uuid: str
    offering_user_uuid: str


def topic_for(queue: str) -> str:
    return f"/amq/queue/{queue}"


def message_id(vhost: str, topic: str, payload: str) -> str:
    return hashlib.sha256(f"{vhost}:{topic}:{payload}".encode()).hexdigest()[:32]


def attributes(user: User, exposed: tuple[str, ...]) -> dict[str, Any]:
    """The fields the offering exposes, leaving out None, "" and [] (as Waldur does)."""
    values = ((name, getattr(user, name, None)) for name in exposed)
    return {name: value for name, value in values if value is not None and value != "" and value != []}


def envelope(payload: dict[str, Any]) -> dict[str, Any]:
    """What Waldur's dispatcher adds to every payload, on both queue styles."""
    return {**payload, "object_type": OFFERING_USER, "schema_version": EVENT_SCHEMA_VERSION}


def create_payload(ou: OfferingUser, user: User, exposed: tuple[str, ...]) -> dict[str, Any]:
    return {
        "offering_user_uuid": ou.uuid,
        "user_uuid": ou.user,
        "username": ou.username,
        "state": DISPLAY[ou.state],
        "runtime_state": ou.runtime_state,
        "action": "create",
        "attributes": attributes(user, exposed),
        "offering_uuid": ou.offering,
    }


def update_payload(ou: OfferingUser, changed_fields: list[str]) -> dict[str, Any]:
    return {
        "offering_user_uuid": ou.uuid,
        "user_uuid": ou.user,
        "username": ou.username,
        "state": DISPLAY[ou.state],
        "runtime_state": ou.runtime_state,
        "changed_fields": changed_fields,
        "action": "update",
        "offering_uuid": ou.offering,
    }


def delete_payload(ou: OfferingUser) -> dict[str, Any]:
    return {
        "offering_user_uuid": ou.uuid,
        "user_uuid": ou.user,
        "username": ou.username,
        "action": "delete",
        "offering_uuid": ou.offering,
    }


def attribute_update_payload(ou: OfferingUser, user: User, changed: list[str],
                             exposed: tuple[str, ...]) -> dict[str, Any]:
    return {
        "offering_user_uuid": ou.uuid,
        "user_uuid": ou.user,
        "username": ou.username,
        "action": "attribute_update",
        "changed_attributes": changed,
        "attributes": attributes(user, exposed),
        "offering_uuid": ou.offering,
    }


def username_set_payload(ou: OfferingUser, resource_backend_ids: list[str]) -> dict[str, Any]:
    # The one payload whose state is Waldur's integer, not the display string.
    return {
        "offering_user_uuid": ou.uuid,
        "user_uuid": ou.user,
        "username": ou.username,
        "state": int(OfferingUserState(ou.state)),
        "action": "username_set",
        "resource_backend_ids": resource_backend_ids,
        "offering_uuid": ou.offering,
    }


def render(payload: dict[str, Any]) -> str:
    # Waldur serialises with json.dumps defaults; keep that so ids match its scheme.
    return json.dumps(payload)


def build_message(vhost: str, queue: str, payload: dict[str, Any]) -> Message:
    text = render(payload)
    return Message(
        vhost=vhost,
        queue=queue,
        body=text.encode(),
        message_id=message_id(vhost, topic_for(queue), text),
        action=payload["action"],
        offering_uuid=payload.get("offering_uuid", ""),
        offering_user_uuid=payload.get("offering_user_uuid", ""),
    )

"""``usync topics``: what each topic holds, as JSON Schema, for audit consumers."""

from __future__ import annotations

from typing import Any, Final

from streams.contract.config import Config
from streams.contract.schema import SCHEMA_VERSION, json_schemas

KINDS: Final = ("events", "outcomes", "dlq")


def topic_names(config: Config) -> dict[str, str]:
    """Kind -> the configured topic name."""
    kafka = config.kafka
    return {"events": kafka.events_topic, "outcomes": kafka.outcomes_topic, "dlq": kafka.dlq_topic}


def topic_schemas(kind: str | None = None, config: Config | None = None) -> dict[str, Any]:
    """The JSON Schema of each topic's record values (or of one kind), keyed by kind.

    Each schema is annotated with the topic name (when a configuration is given) and the
    record schema version, so a consumer can tell which documents it validated against.
    """
    schemas = json_schemas()
    names = topic_names(config) if config is not None else {}
    selected = KINDS if kind is None else (kind,)
    out: dict[str, Any] = {}
    for k in selected:
        schema = dict(schemas[k])
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"usync {k} record, schema_version {SCHEMA_VERSION}"
        if k in names:
            schema["x-topic"] = names[k]
        out[k] = schema
    return out

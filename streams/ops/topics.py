"""``usync topics``: what each topic holds, as JSON Schema, for audit consumers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec

from streams.contract.config import Config
from streams.contract.schema import SCHEMA_VERSION, json_schemas

KINDS: Final = ("events", "outcomes", "dlq", "listings", "checkpoints", "user-index")


def topic_names(config: Config) -> dict[str, str]:
    """Kind -> the configured topic name."""
    kafka = config.kafka
    return {"events": kafka.events_topic, "outcomes": kafka.outcomes_topic, "dlq": kafka.dlq_topic,
            "listings": kafka.listings_topic or "", "checkpoints": kafka.checkpoints_topic or "",
            "user-index": kafka.user_index_topic or ""}


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


def schema_text(schema: Any) -> str:
    """A schema document as ``usync topics schema`` prints it (and ``docs/schemas/`` keeps it)."""
    return msgspec.json.format(msgspec.json.encode(schema)).decode() + "\n"


def write_schemas(directory: Path, config: Config | None = None) -> list[Path]:
    """Write each topic's schema to ``<directory>/<kind>.schema.json`` (what ``--topic <kind>``
    prints) and delete the ``*.schema.json`` of kinds that no longer exist, so the directory
    is regenerated whole: ``usync topics schema --write docs/schemas``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, schema in topic_schemas(None, config).items():
        path = directory / f"{kind}.schema.json"
        path.write_text(schema_text(schema))
        written.append(path)
    for stale in set(directory.glob("*.schema.json")) - set(written):
        stale.unlink()
    return written

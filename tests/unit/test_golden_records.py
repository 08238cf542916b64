"""Records written by earlier trees still decode, with every field they carried (tests/data/records/).

Each dated directory holds one record of every kind its day's code wrote (how: its
``index.json``, and ``tests/support/golden.py`` or its ``made_by.py``). A change of format that
breaks a reader of last month's records fails here: a record that no longer decodes, a field
that decodes to nothing (renamed, or dropped with a default: msgspec ignores unknown keys),
or a record that no longer validates against the kept JSON Schemas (docs/schemas/). The
newest directory must hold every kind today's code can write: add a directory
(``python -m tests.support.golden tests/data/records/<date>``) when a kind or field is added.
"""

from __future__ import annotations

import base64
import json
import typing
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from streams.adapters.faust.rowcodec import ROWS
from streams.contract.schema import (
    Body,
    OutcomeAction,
    dead_letter_decoder,
    envelope_decoder,
    outcome_decoder,
    request_decoder,
)
from streams.core import Row
from streams.core.checkpoint import checkpoint_decoder

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "tests" / "data" / "records"
SCHEMAS = ROOT / "docs" / "schemas"
DAYS = sorted(p for p in RECORDS.iterdir() if p.is_dir())
DECODERS = {"events": envelope_decoder, "outcomes": outcome_decoder, "dlq": dead_letter_decoder,
            "corrections": request_decoder, "listings": envelope_decoder, "checkpoints": checkpoint_decoder}


def lines(day: Path, topic: str) -> list[tuple[str, bytes]]:
    """(what, value) of every record of ``topic`` written that day."""
    path = day / f"{topic}.jsonl"
    if not path.exists():
        return []
    names = json.loads((day / "index.json").read_text())[topic]
    values = path.read_bytes().splitlines()
    assert len(names) == len(values), f"{path}: index.json names {len(names)} records, the file holds {len(values)}"
    return list(zip(names, values))


def cases() -> list[Any]:
    return [pytest.param(day, topic, what, value, id=f"{day.name}/{topic}/{what}")
            for day in DAYS for topic in DECODERS for what, value in lines(day, topic)]


def read_back(decoded: Any, original: Any, where: str) -> None:
    """Every value of ``original`` (the JSON as written) is in ``decoded`` (today's Struct)."""
    if isinstance(decoded, msgspec.Struct) and decoded.__struct_config__.array_like:  # a row: a JSON array
        names = [f.name for f in msgspec.structs.fields(decoded)]
        assert isinstance(original, list) and len(original) == len(names), f"{where}: {original!r} is not a row"
        for name, value in zip(names, original):
            read_back(getattr(decoded, name), value, f"{where}.{name}")
    elif isinstance(decoded, msgspec.Struct):
        assert isinstance(original, dict), f"{where}: an object became {type(decoded).__name__}"
        config = decoded.__struct_config__
        by_json_name = {f.encode_name: f.name for f in msgspec.structs.fields(decoded)}
        for key, value in original.items():
            if key == config.tag_field:
                assert value == config.tag, f"{where}.{key}: {value!r} decodes as {config.tag!r}"
                continue
            assert key in by_json_name, f"{where}.{key}: no field reads it any more (renamed or dropped?)"
            read_back(getattr(decoded, by_json_name[key]), value, f"{where}.{key}")
    elif isinstance(decoded, list):
        assert len(decoded) == len(original), f"{where}: {len(original)} items decode as {len(decoded)}"
        for n, (d, o) in enumerate(zip(decoded, original)):
            read_back(d, o, f"{where}[{n}]")
    elif isinstance(decoded, dict):  # JSON keys are strings; an int-keyed map reads them as ints
        by_text = {str(key): value for key, value in decoded.items()}
        assert by_text.keys() == original.keys(), f"{where}: keys {sorted(original)} decode as {sorted(decoded)}"
        for key in original:
            read_back(by_text[key], original[key], f"{where}.{key}")
    elif isinstance(decoded, Enum):
        assert decoded.value == original, f"{where}: {original!r} decodes as {decoded.value!r}"
    elif isinstance(decoded, datetime):
        assert decoded == msgspec.json.decode(json.dumps(original), type=datetime), f"{where}: {original!r} -> {decoded}"
    elif isinstance(decoded, bytes):
        assert decoded == base64.b64decode(original), f"{where}: the bytes changed"
    else:
        assert decoded == original, f"{where}: {original!r} decodes as {decoded!r}"


@pytest.mark.parametrize(("day", "topic", "what", "value"), cases())
def test_every_golden_record_decodes_with_every_field_and_validates(day: Path, topic: str, what: str,
                                                                    value: bytes) -> None:
    decoded = DECODERS[topic].decode(value)
    read_back(decoded, json.loads(value), f"{day.name}/{topic}.jsonl ({what})")
    schema = SCHEMAS / f"{topic}.schema.json"
    if schema.exists():  # the corrections topic is internal: no published schema
        jsonschema.validate(json.loads(value), json.loads(schema.read_text()))


@pytest.mark.parametrize("day", DAYS, ids=[d.name for d in DAYS])
def test_every_golden_row_decodes_to_the_row_it_was(day: Path) -> None:
    rows = [json.loads(line) for line in (day / "rows.jsonl").read_text().splitlines()]
    assert rows
    for stored in rows:
        row = ROWS.decode(stored["key"], base64.b64decode(stored["value"]))
        assert row == Row(**stored["row"]), f"{day.name}/rows.jsonl ({stored['what']})"


def test_the_newest_day_holds_every_kind_todays_code_writes() -> None:
    newest = DAYS[-1]
    hint = f"add a directory of today's records: python -m tests.support.golden tests/data/records/<date> (newest: {newest.name})"
    kinds = {json.loads(v)["body"]["kind"] for _, v in lines(newest, "events")}
    assert kinds >= {body.__struct_config__.tag for body in typing.get_args(Body)}, hint
    actions = {json.loads(v)["action"] for _, v in lines(newest, "outcomes")}
    assert actions >= {a.value for a in OutcomeAction}, hint
    letters = [json.loads(v) for _, v in lines(newest, "dlq")]
    assert any(d["site"] for d in letters) and any(d.get("topic") for d in letters), hint + " (bridge and worker letters)"
    assert lines(newest, "corrections"), hint
    formats = {json.loads(line)["format"] for line in (newest / "rows.jsonl").read_text().splitlines()}
    assert formats >= {"v2", "array", "map"}, hint


def test_read_back_notices_a_field_no_longer_read() -> None:
    """The guard itself: an outcome whose ``desired`` became unknown to the decoder fails."""
    class Renamed(msgspec.Struct, kw_only=True):
        link: str
        wanted: str | None = None

    with pytest.raises(AssertionError, match="desired: no field reads it"):
        read_back(msgspec.json.decode(b'{"link":"hpc","desired":"alice"}', type=Renamed), {"link": "hpc",
                                                                                       "desired": "alice"}, "outcome")

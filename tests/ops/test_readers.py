"""Pure parts of tail and status: time parsing, filters, the partitioner, schemas."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import jsonschema
import msgspec
import pytest

from bridges.outlet import partition_for
from streams.ops.kafka_read import parse_when
from streams.ops.status import partition_of
from streams.ops.tail import Facts, TailFilter, matches
from streams.ops.topics import topic_schemas
from streams.contract.schema import Outcome, OutcomeAction

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("90s", NOW - timedelta(seconds=90)), ("15m", NOW - timedelta(minutes=15)), ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)), ("2026-04-30T10:00:00", datetime(2026, 4, 30, 10, tzinfo=timezone.utc)),
    ("2026-04-30T10:00:00+02:00", datetime(2026, 4, 30, 8, tzinfo=timezone.utc)),
])
def test_parse_when(text, expected):
    assert parse_when(text, NOW) == expected


def test_filters():
    facts = Facts(NOW, {"hpc"}, {"alice", "0d4f7c2e9b1a4e3c8f6d2a5b7c9e1f30"})
    assert matches(facts, TailFilter())
    assert matches(facts, TailFilter(links={"hpc", "x"}, users={"alice"}, since=NOW - timedelta(1), until=NOW + timedelta(1)))
    assert matches(facts, TailFilter(users={"0D4F7C2E-9B1A-4E3C-8F6D-2A5B7C9E1F30"}))  # dashed, upper case
    assert not matches(facts, TailFilter(links={"x"}))
    assert not matches(facts, TailFilter(users={"bob"}))
    assert not matches(facts, TailFilter(since=NOW + timedelta(seconds=1)))
    assert not matches(facts, TailFilter(until=NOW))
    assert matches(Facts(NOW, set(), set(), '{"user": "bob"}'), TailFilter(users={"bob"}))  # dead letters: raw text


def test_status_partitioner_is_the_bridges():
    for key in ("a:5a9bd0f6a3c54cd3b5b0b0c4c1e8f5a1", "hpc", "b:x"):
        assert partition_of(key, 8) == partition_for(key.encode(), tuple(range(8)))


def test_schemas_validate_records():
    schemas = topic_schemas()
    assert set(schemas) == {"events", "outcomes", "dlq", "listings", "checkpoints", "user-index"}
    outcome = Outcome(link="hpc", user_username="alice", action=OutcomeAction.CORRECTED, desired="a", observed="",
                      http_status=200, at=NOW)
    jsonschema.validate(msgspec.to_builtins(outcome), schemas["outcomes"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"link": "hpc"}, schemas["outcomes"])
    assert topic_schemas("dlq").keys() == {"dlq"}

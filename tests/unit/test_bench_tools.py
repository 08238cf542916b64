"""The benches' own arithmetic, without brokers: reading each system's message ids
(bench_peers), folding py-spy's stacks (profile_bridge), joining a change's records into
stages (latency_stages)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench.latency_stages import StageClock, per_change, summary  # noqa: E402
from bench_peers import Loss, extract_id  # noqa: E402
from profile_bridge import fold  # noqa: E402

ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("system, key, headers", [
    ("usync-amqp", b"b:offering", [("usync.site", b"b"), ("usync.event-id", ID.encode())]),
    ("connect-jcustenborder", json.dumps({"messageId": ID}).encode(), []),
    ("connect-camel", None, [("CamelHeader.CamelSpringRabbitmqMessageId", ID.encode())]),
])
def test_each_system_s_record_gives_the_published_id(system, key, headers):
    assert extract_id(system, key, headers) == ID


def test_a_record_without_the_id_counts_as_none():
    assert extract_id("connect-camel", None, [("other", b"x")]) is None
    assert extract_id("connect-jcustenborder", None, []) is None


def test_lost_leaves_out_what_is_still_queued():
    loss = Loss("connect-camel", published=100, records=120, distinct=90, duplicates=30, left=4, killed_at=50)
    assert loss.lost == 6


def test_folded_stacks_give_self_and_inclusive_shares():
    own, total, samples = fold([
        "main (app.py:1);read (relay.py:10);decode (records.py:5) 3",
        "main (app.py:1);read (relay.py:10) 1",
        "main (app.py:1);send (outlet.py:7) 2",
        "garbage",
    ])
    assert samples == 6
    assert own["decode (records.py)"] == 3 and own["read (relay.py)"] == 1
    assert total["read (relay.py)"] == 4 and total["main (app.py)"] == 6


def _envelope(site, ou, name, received):
    return {"site": site, "received_at": received, "body": {"kind": "event", "offering_user_uuid": ou, "username": name}}


def test_a_change_s_records_join_into_stages_in_order():
    clock = StageClock()
    clock.changed["b1"] = (100.0, "alice-v2", "a1")
    clock.written[("a1", "alice-v2")] = 100.5
    events = [(100.03, _envelope("b", "b1", "alice-v2", "1970-01-01T00:01:40.020Z")),
              (100.04, _envelope("b", "b1", "alice-v2", "1970-01-01T00:01:40.035Z")),  # a redelivery: ignored
              (100.6, _envelope("a", "a1", "alice-v2", "1970-01-01T00:01:40.550Z"))]
    routed = [(100.1, [_envelope("b", "b9", "bob-v2", "1970-01-01T00:01:40.010Z"),  # the route packs a batch
                       _envelope("b", "b1", "alice-v2", "1970-01-01T00:01:40.020Z")])]
    corrections = [(100.2, {"b_offering_user_uuid": "b1", "desired": "alice-v2"})]
    outcomes = [(100.52, {"action": "corrected", "offering_user_uuid": "a1", "desired": "alice-v2"})]
    (row,) = per_change(clock, events, routed, corrections, outcomes)
    expected = {"B → bridge": 0.02, "bridge → Kafka": 0.01, "Kafka → routed": 0.07, "routed → correction": 0.1,
                "correction → PATCH": 0.3, "total": 0.5, "PATCH → outcome": 0.02, "PATCH → echo": 0.05}
    assert row == pytest.approx(expected)
    assert summary([row])["total"] == pytest.approx((0.5, 0.5))


def test_a_change_missing_a_stage_is_left_out():
    clock = StageClock()
    clock.changed["b1"] = (100.0, "alice-v2", "a1")
    assert per_change(clock, [], [], [], []) == []

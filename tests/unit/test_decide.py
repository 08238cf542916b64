"""Decisions: what needs a correction, what the sink does after reading live, HTTP handling."""

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contract.config import Endpoint, Link
from streams.core import (
    Decision,
    HttpClass,
    Row,
    SkipReason,
    Verdict,
    classify_http,
    correction_needed,
    decide,
    drift,
    drift_by_link,
    empty_state,
    rejected,
    needing_correction,
    parse_retry_after,
    row_key,
)
from streams.retry import backoff_delay
from streams.contract.schema import OfferingUserRecord, OutcomeAction

LINK = Link(name="l", source=Endpoint("b", "b" * 32), target=Endpoint("a", "a" * 32))
OPT_IN = Link(name="l2", source=Endpoint("b", "b" * 32), target=Endpoint("a", "a" * 32),
              target_states=["OK", "Creating", "Requested", "Error creating"])


def row(**fields) -> Row:
    base = dict(link="l", user_username="alice", b_offering_user_uuid="1" * 32, b_username="good", b_state="OK",
                a_offering_user_uuid="2" * 32, a_username="bad", a_state="OK")
    return Row(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "needed"),
    [
        ({}, True),
        ({"a_state": "Requested", "a_username": ""}, True),
        ({"a_state": "Creating", "a_username": None}, True),
        ({"a_username": "good"}, False),
        ({"b_state": "Requested"}, False),
        ({"b_username": ""}, False),
        ({"b_username": None}, False),
        ({"b_restricted": True}, False),
        ({"a_state": "Deleted"}, False),
        ({"a_state": "Error creating"}, False),
        ({"a_offering_user_uuid": None, "a_username": None, "a_state": None}, False),
        ({"b_offering_user_uuid": None, "b_username": None, "b_state": None}, False),
    ],
)
def test_correction_needed(fields, needed):
    assert correction_needed(row(**fields), LINK) is needed


def test_a_link_may_opt_in_to_correcting_other_states():
    assert correction_needed(row(a_state="Error creating"), OPT_IN)


def test_drift_lists_the_rows_of_one_link_that_need_a_correction():
    state = empty_state()
    for key, value in {row_key("l", "alice"): row(), row_key("l", "bob"): row(user_username="bob", a_username="good"),
                       row_key("l2", "carol"): row(link="l2", user_username="carol")}.items():
        state.rows[key] = value
    assert [r.user_username for r in drift(state, LINK)] == ["alice"]


class CountingRows(dict):
    """A rows mapping that counts how many rows were read from it (a faust table decodes each)."""

    reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return super().__getitem__(key)

    def values(self):
        for key in self:
            yield self[key]

    def items(self):
        for key in self:
            yield key, self[key]


def test_drift_by_link_reads_each_row_once_and_agrees_with_drift_and_rejected_per_link():
    links = [LINK, OPT_IN, Link(name="l3", source=Endpoint("b", "c" * 32), target=Endpoint("a", "d" * 32))]
    state = empty_state()
    state.rows = CountingRows()
    for i in range(30):
        link = links[i % 3].name
        fields = [{}, {"a_username": "good"}, {"rejected_desired": "good", "rejected_observed": "bad", "rejected_at": 5,
                                               "rejected_count": 1}, {"a_state": "Error creating"}][i % 4]
        state.rows[row_key(link, f"u{i}")] = row(link=link, user_username=f"u{i}", **fields)
    state.rows[row_key("gone", "x")] = row(link="gone", user_username="x")  # a link no longer configured

    found = drift_by_link(state, links)

    assert state.rows.reads == len(state.rows)  # one pass, not one per link
    assert list(found) == ["l", "l2", "l3"] and [f.rows for f in found.values()] == [10, 10, 10]
    for link in links:  # against the definition, row by row
        rows = [r for r in dict.values(state.rows) if r.link == link.name and correction_needed(r, link)]
        assert found[link.name].drift == [r for r in rows if not r.rejected_desired]
        assert found[link.name].rejected == [r for r in rows if r.rejected_desired]
        assert (drift(state, link), rejected(state, link)) == (found[link.name].drift, found[link.name].rejected)
    assert found["l2"].drift and found["l"].rejected  # both kinds occur


def live(uuid: str = "2" * 32, user: str = "alice", username: str | None = "good", state: str = "OK",
         restricted: bool = False) -> OfferingUserRecord:
    return OfferingUserRecord(uuid=uuid, user_uuid="9" * 32, user_username=user, offering_uuid="a" * 32,
                              username=username, state=state, is_restricted=restricted)


def test_decide_patches_a_to_bs_username_when_they_still_differ():
    decision = decide(LINK, live("1" * 32), live(username="bad", state="Requested"))
    assert decision == Decision(verdict=Verdict.PATCH, offering_user_uuid="2" * 32, desired="good", observed="bad")
    assert decision.outcome_action is OutcomeAction.CORRECTED


def test_decide_sends_nothing_when_they_are_already_equal():
    decision = decide(LINK, live("1" * 32), live())
    assert decision.verdict is Verdict.ALREADY_EQUAL and decision.offering_user_uuid is None
    assert decision.outcome_action is OutcomeAction.ALREADY_EQUAL


@pytest.mark.parametrize(
    ("b_live", "a_live", "reason"),
    [
        (None, live(), SkipReason.B_MISSING),
        (live("1" * 32), None, SkipReason.A_MISSING),
        (live("1" * 32, state="Requested"), live(username="bad"), SkipReason.B_NOT_OK),
        (live("1" * 32, username=""), live(username="bad"), SkipReason.B_EMPTY),
        (live("1" * 32, username=None), live(username="bad"), SkipReason.B_EMPTY),
        (live("1" * 32, restricted=True), live(username="bad"), SkipReason.B_RESTRICTED),
        (live("1" * 32), live(username="bad", state="Deleted"), SkipReason.A_NOT_ELIGIBLE),
        (live("1" * 32), live(username="bad", state="Pending account linking"), SkipReason.A_NOT_ELIGIBLE),
        (live("1" * 32, user="alice2"), live(username="bad"), SkipReason.NOT_SAME_USER),
    ],
)
def test_decide_skips_with_a_reason(b_live, a_live, reason):
    decision = decide(LINK, b_live, a_live)
    assert (decision.verdict, decision.reason) == (Verdict.SKIPPED, reason.value)
    assert decision.outcome_action is OutcomeAction.SKIPPED


def test_decide_honours_a_links_opt_in_states():
    assert decide(OPT_IN, live("1" * 32), live(username="bad", state="Error creating")).verdict is Verdict.PATCH


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (None, HttpClass.RETRY), (429, HttpClass.RETRY), (500, HttpClass.RETRY), (502, HttpClass.RETRY),
        (503, HttpClass.RETRY), (504, HttpClass.RETRY), (408, HttpClass.RETRY),
        (400, HttpClass.REJECT), (404, HttpClass.REJECT), (409, HttpClass.REJECT), (422, HttpClass.REJECT),
        (401, HttpClass.PAUSE_SITE), (403, HttpClass.PAUSE_SITE),
        (200, HttpClass.SUCCESS), (204, HttpClass.SUCCESS),
    ],
)
def test_classify_http(status, verdict):
    assert classify_http(status) is verdict


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 2**32), st.none() | st.floats(0, 1000))
def test_backoff_stays_under_the_cap_and_never_retries_before_retry_after(attempt, seed, retry_after):
    delay = backoff_delay(attempt, random.Random(seed), retry_after=retry_after)
    assert 0 <= delay <= max(120, retry_after or 0)
    if retry_after is not None:
        assert delay >= retry_after


def test_backoff_grows_from_one_second_and_is_jittered():
    rng = random.Random(7)
    assert backoff_delay(0, rng) <= 1
    assert max(backoff_delay(3, rng) for _ in range(50)) <= 8
    assert len({round(backoff_delay(10, rng), 6) for _ in range(20)}) > 1


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after("17", now) == 17.0
    assert parse_retry_after(later, now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None


def test_needing_correction_picks_the_dirty_rows_to_send_to_the_sink():
    state = empty_state()
    state.rows[row_key("l", "alice")] = row()
    state.rows[row_key("l", "bob")] = row(user_username="bob", a_username="good")
    state.rows[row_key("gone", "carol")] = row(link="gone", user_username="carol")
    keys = [row_key("l", "alice"), row_key("l", "bob"), row_key("gone", "carol"), row_key("l", "nobody")]
    assert [r.user_username for r in needing_correction(state, [LINK], keys)] == ["alice"]

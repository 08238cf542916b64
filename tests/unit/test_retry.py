"""The shared retry policy: 1 s doubling to 120 s, jittered, Retry-After honoured; and the
loop that retries Kafka requests with it."""

import asyncio
import random

import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka import until_kafka_answers
from streams.retry import Backoff, backoff_delay


@given(attempt=st.integers(0, 200), seed=st.integers())
def test_delay_stays_within_half_and_whole_of_the_capped_step(attempt, seed):
    step = min(120.0, 2.0 ** min(attempt, 32))
    delay = backoff_delay(attempt, random.Random(seed))
    assert step / 2 <= delay <= step


def test_delays_double_from_one_second_to_the_cap():
    backoff = Backoff(rng=random.Random(1))
    upper_bounds = [min(120.0, 2.0**i) for i in range(10)]
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(d <= bound for d, bound in zip(delays, upper_bounds))
    assert delays[0] <= 1.0 and delays[-1] >= 60.0


def test_jitter_spreads_clients_that_failed_together():
    delays = {round(backoff_delay(5, random.Random(seed)), 3) for seed in range(50)}
    assert len(delays) > 40


def test_retry_after_is_a_floor():
    assert backoff_delay(0, random.Random(1), retry_after=30) == 30
    assert backoff_delay(0, random.Random(1), retry_after=0.01) <= 1.0


def test_reset_starts_over():
    backoff = Backoff(rng=random.Random(1))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


async def test_until_kafka_answers_retries_kafka_failures_and_returns_the_answer():
    failures = [KafkaConnectionError("broker gone"), asyncio.TimeoutError()]
    retries: list[int] = []

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "acknowledged"

    answer = await until_kafka_answers(attempt, "test send", cap=0.01, on_retry=lambda: retries.append(1))
    assert answer == "acknowledged"
    assert len(retries) == 2


async def test_until_kafka_answers_lets_other_errors_through():
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await until_kafka_answers(attempt, "test send", cap=0.01)
    assert calls == [1]

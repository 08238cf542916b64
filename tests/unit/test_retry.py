"""The shared retry policy: 1 s doubling to 120 s, jittered, Retry-After honoured; and the
loop that retries Kafka requests with it."""

import asyncio
import random

import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import given
from hypothesis import strategies as st

from streams.adapters.kafka.client import kafka_transient
from streams.errors import KafkaUnavailable, SiteUnavailable
from streams.retry import Backoff, backoff_delay, is_transient, retry_forever


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


async def test_retry_forever_retries_kafka_failures_and_returns_the_answer():
    failures = [KafkaConnectionError("broker gone"), asyncio.TimeoutError(), KafkaUnavailable("send failed")]
    retries: list[type] = []

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "acknowledged"

    answer = await retry_forever(attempt, "test send", transient=kafka_transient, backoff=Backoff(cap=0.01),
                                 on_retry=lambda exc, _delay: retries.append(type(exc)))
    assert answer == "acknowledged"
    assert retries == [KafkaConnectionError, asyncio.TimeoutError, KafkaUnavailable]


async def test_retry_forever_lets_a_bug_through_at_once():
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await retry_forever(attempt, "test send", transient=kafka_transient, backoff=Backoff(cap=0.01))
    assert calls == [1]


def test_only_classified_failures_are_transient_by_default():
    assert is_transient(SiteUnavailable("a", 503, "HTTP 503")) and is_transient(TimeoutError())
    assert is_transient(ConnectionResetError())
    assert not is_transient(KeyError("a bug")) and not is_transient(ValueError())
    assert not is_transient(KafkaConnectionError("broker gone"))  # only the Kafka adapter's own classification
    assert kafka_transient(KafkaConnectionError("broker gone"))


async def test_a_coroutine_on_retry_is_awaited_and_the_backoff_chosen_per_failure():
    slow, fast = Backoff(base=0.02, cap=0.02), Backoff(base=0.001, cap=0.001)
    seen: list[str] = []
    failures = [SiteUnavailable("a", 401, "refused"), TimeoutError()]

    async def attempt() -> int:
        if failures:
            raise failures.pop(0)
        return 7

    async def on_retry(exc: BaseException, delay: float) -> None:
        seen.append(f"{type(exc).__name__}:{delay <= 0.001}")

    assert await retry_forever(attempt, "t", on_retry=on_retry,
                               backoff_for=lambda exc: slow if isinstance(exc, SiteUnavailable) else fast) == 7
    assert seen == ["SiteUnavailable:False", "TimeoutError:True"] and slow.attempt == 1 and fast.attempt == 1

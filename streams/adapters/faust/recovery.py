"""faust's table recovery, made to outlive a Kafka outage.

After every rebalance faust restores the tables from their changelogs: it asks Kafka
for the changelogs' high-water marks and earliest offsets, each step bounded by
``broker_request_timeout``. When Kafka is away for longer than that, faust either
raises the Kafka timeout out of its recovery service, and the worker exits, or takes
the step's own timeout for "the service stopped" and never finishes the recovery (see
``mode.Service.wait_first``). A worker must wait for Kafka instead, as every other
loop of usync does; so these offset queries are retried with backoff and jitter for as
long as it takes, and a step no longer has a deadline of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery

from streams.adapters.kafka.client import kafka_transient
from streams.retry import Backoff, retry_forever

log = logging.getLogger("usync.recovery")

RETRY_CAP_SECONDS = 30.0  # a restored worker is one Kafka round trip from work: probe often


class PatientRecovery(Recovery):
    """Recovery whose Kafka queries wait out an outage; ``waiting_for_kafka`` is for /health."""

    waiting_for_kafka: bool = False

    async def _wait(self, coro: Any, timeout: Any = None) -> None:
        # No deadline per step: running out would stop the recovery for good (see above).
        # A new rebalance or the worker stopping still interrupts every step.
        await super()._wait(coro, timeout=None)

    async def _build_highwaters(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        parent = super()._build_highwaters
        await self._until_kafka_answers(lambda: parent(consumer, tps, destination, title),
                                        f"{title} changelogs' high-water marks")

    async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        parent = super()._build_offsets
        await self._until_kafka_answers(lambda: parent(consumer, tps, destination, title),
                                        f"{title} changelogs' earliest offsets")

    async def _until_kafka_answers(self, query: Callable[[], Awaitable[None]], what: str) -> None:
        await retry_forever(query, f"Table recovery reading the {what}", transient=kafka_transient,
                            backoff=Backoff(cap=RETRY_CAP_SECONDS), on_retry=self._waiting)
        if self.waiting_for_kafka:
            log.info("Table recovery read the %s: Kafka answers again", what)
            self.waiting_for_kafka = False

    def _waiting(self, _exc: BaseException, _delay: float) -> None:
        self.waiting_for_kafka = True


class PatientTableManager(TableManager):
    """faust's table manager with :class:`PatientRecovery` (``faust.App(TableManager=...)``)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = PatientRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

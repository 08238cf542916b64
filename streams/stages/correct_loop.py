"""The correct stage's batch handler: ``<app>-corrections`` records -> :class:`Corrector`.

Consumed by a group of its own (``streams.adapters.kafka.consumer.BatchConsumer``,
``<app>-sink``, committing a batch only after this returned). One request per (link,
user) per batch (the latest wins, as :func:`streams.stages.correct.coalesce`); each is
handled on its own, so one that fails holds up no other:

- a transient failure (Kafka, a site away) is retried in place, with backoff, forever
  (the live reads make a repeat harmless); it is never dead-lettered;
- a request that does not decode, or whose handling raises anything else (a bug, a
  site answer that is not what its schema says), goes to the DLQ with its raw bytes and
  topic / partition / offset, and a decoded one gets a ``dead-lettered`` outcome with
  the reason. The batch is committed past it once both are acknowledged, so a poison
  request no longer stops the stage (the worker stays up; ``/health`` says degraded).
"""

from __future__ import annotations

import asyncio

import msgspec

from streams.contract.schema import CorrectionRequest, request_decoder
from streams.ports import Record
from streams.retry import retry_forever
from streams.stages.correct import Corrector
from streams.stages.dead_letter import HANDLER_ERROR, UNDECODABLE, DeadLetters

BATCH = 500
# Seconds a rebalance waits for the batch under way. Below the group's 10 s session
# timeout: a member still in its revocation after that is dropped from the group, the
# others are assigned its partitions, and it would go on spending the share of the API
# budget they now own (seen in tests/app/test_federation.py: 42 calls in one second on a
# site capped at 20 + 5 with a 20 s wait). After the wait its share is taken away.
REVOKE_WAIT = 8.0


class CorrectLoop:
    def __init__(self, corrector: Corrector, dead: DeadLetters) -> None:
        self.corrector = corrector
        self.dead = dead

    async def handle(self, records: list[Record]) -> None:
        """Every outcome (and dead letter) of the batch acknowledged, however long Kafka or a site takes."""
        latest: dict[str, tuple[CorrectionRequest, Record]] = {}
        letters = []
        for record in records:
            try:
                request = request_decoder.decode(record.value or b"")
            except msgspec.DecodeError as exc:
                letters.append(self.dead.record(record, record.value or b"", UNDECODABLE, f"correction request: {exc}"))
                continue
            latest[request.key] = (request, record)
        await asyncio.gather(*letters, *(self._one(request, record) for request, record in latest.values()))

    async def _one(self, request: CorrectionRequest, record: Record) -> None:
        try:
            await retry_forever(lambda: self.corrector.handle(request), f"correction of {request.key}")
        except Exception as exc:  # not transient: retry_forever retries those and lets only the rest out
            reason = f"{type(exc).__name__}: {exc}"
            await self.dead.record(record, record.value or b"", HANDLER_ERROR, reason)
            await self.corrector.dead_lettered(request, reason)

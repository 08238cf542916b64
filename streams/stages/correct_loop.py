"""The correct stage's batch handler: ``<app>-corrections`` records -> :class:`Corrector`.

Consumed by a group of its own (``streams.adapters.kafka.consumer.BatchConsumer``,
``<app>-sink``, committing a batch only after this returned). A batch whose outcomes
Kafka did not take is handled again in place, with backoff, until they are all
acknowledged (the live reads make a repeat harmless); anything but a transient failure
is a bug and stops the stage loudly.
"""

from __future__ import annotations

from streams.contract.schema import request_decoder
from streams.retry import retry_forever
from streams.stages.correct import Corrector

BATCH = 500
# Seconds a rebalance waits for the batch under way. Below the group's 10 s session
# timeout: a member still in its revocation after that is dropped from the group, the
# others are assigned its partitions, and it would go on spending the share of the API
# budget they now own (seen in tests/app/test_federation.py: 42 calls in one second on a
# site capped at 20 + 5 with a 20 s wait). After the wait its share is taken away.
REVOKE_WAIT = 8.0


class CorrectLoop:
    def __init__(self, corrector: Corrector) -> None:
        self.corrector = corrector

    async def handle(self, values: list[bytes]) -> None:
        """Every outcome of the batch acknowledged, however long Kafka or a site takes."""
        requests = [request_decoder.decode(value) for value in values]
        await retry_forever(lambda: self.corrector.handle_batch(requests), "correction batch")

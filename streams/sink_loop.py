"""The sink stage: ``<app>-corrections`` -> :class:`streams.sink.Sink`, on aiokafka.

A faust agent acked what it never handled: when two fresh workers formed their group,
a worker kept a corrections partition across the rebalance and resumed past requests
it had fetched but never given to the sink, and the group's commit moved over them
(tests/e2e/test_worker_startup.py caught it; faust's commit takes the first run of
acked offsets, gap or not). Here the stage owns its offsets, as the router does: a
consumer group of its own, a batch at a time, the batch's offsets committed only after
every outcome of the batch is acknowledged by Kafka (invariant 1).

A rebalance waits for the batch under way (up to ``REVOKE_WAIT``) before giving its
partitions away; a batch that outlives that commits nothing, and the partitions' next
owner handles it again (at-least-once; the sink's live reads make a repeat harmless).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from streams.config import Config
from streams.kafka import Stage, client_options, close_quietly
from streams.retry import Backoff
from streams.sink import Sink, request_decoder
from streams.transport import FETCH_MAX_WAIT_MS

log = logging.getLogger("usync.sink")

BATCH = 500
REVOKE_WAIT = 20.0  # seconds a rebalance waits for the batch under way


class _FinishBeforeRevoke(ConsumerRebalanceListener):
    def __init__(self, busy: asyncio.Lock) -> None:
        self.busy = busy

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            async with asyncio.timeout(REVOKE_WAIT):
                async with self.busy:
                    pass
        except TimeoutError:
            log.warning("sink: a batch is still under way after %.0f s; its partitions move on, "
                        "their next owner handles it again", REVOKE_WAIT)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("sink: handling corrections partitions %s", sorted(tp.partition for tp in assigned))


class SinkLoop(Stage):
    name = "sink"

    def __init__(self, config: Config, sink: Sink, topic: str) -> None:
        self.config = config
        self.sink = sink
        self.topic = topic
        self.group_id = f"{config.app_id}-sink"
        self.connected = False
        self._busy = asyncio.Lock()

    async def serve(self, backoff: Backoff) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.config), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # see streams.transport: no idling on a long poll
        )
        consumer.subscribe([self.topic], listener=_FinishBeforeRevoke(self._busy))
        try:
            await consumer.start()
            self.connected = True
            log.info("sink: consuming %s as group %s", self.topic, self.group_id)
            while True:
                fetched = await consumer.getmany(timeout_ms=500, max_records=BATCH)
                if fetched:
                    async with self._busy:
                        await self._handle(fetched)
                        await _commit(consumer, fetched)
                    backoff.reset()
        finally:
            self.connected = False
            await close_quietly(consumer, "sink")

    async def _handle(self, fetched: dict[Any, list[Any]]) -> None:
        """Every outcome of the batch acknowledged, however long Kafka or a site takes."""
        requests = [request_decoder.decode(m.value) for messages in fetched.values() for m in messages]
        backoff = Backoff()
        while True:
            try:
                await self.sink.handle_batch(requests)
                return
            except Exception as exc:  # Kafka gone while writing outcomes...: the batch again, never skipped
                delay = backoff.next_delay()
                log.warning("sink batch failed (%s: %s); again in %.1f s", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)


async def _commit(consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]) -> None:
    try:
        await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in fetched.items()})
    except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions: the new owner repeats
        log.info("sink: commit after rebalance refused (%s); the batch will be handled again", exc)

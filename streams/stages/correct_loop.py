"""The correct stage's handler: ``<app>-corrections`` records -> per-site lanes -> :class:`Corrector`.

Consumed by a group of its own (``streams.adapters.kafka.consumer.WindowConsumer``,
``<app>-sink``), one record at a time: :meth:`CorrectLoop.dispatch` puts a request in
the **lane of its target site** and returns a future that is done once its outcome (or
dead letter) is acknowledged; the consumer commits, per partition, only the offsets
below the lowest one not yet done (at-least-once).

Lanes are the bulkheads (issue 16, item 3). With one ``gather`` per batch, a batch
waited for its slowest call whatever site the rest were for: with 3 s of latency on A,
a correction to another site queued behind one to A waited ~9 s, and a site down held
every other site's corrections. A lane runs at most :data:`LANE_CONCURRENCY` requests of
its site at a time; the rest wait in the lane (in memory), so a site that is slow or
down holds up only its own lane, and its retries (which read the source again) cost the
source's budget no more than that many requests' worth. In a lane, one request per
(link, user) waits (the latest wins, as :func:`streams.stages.correct.coalesce`; the one
it replaces is done when it is), and one (link, user) is never handled twice at once.

Each request is handled on its own, so one that fails holds up no other:

- a transient failure (Kafka, a site away) is retried in place, with backoff, forever
  (the live reads make a repeat harmless); it is never dead-lettered;
- a request that does not decode, or whose handling raises anything else (a bug, a
  site answer that is not what its schema says), goes to the DLQ with its raw bytes and
  topic / partition / offset, and a decoded one gets a ``dead-lettered`` outcome with
  the reason. Its offset is done once both are acknowledged, so a poison request no
  longer stops the stage (the worker stays up; ``/health`` says degraded).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import msgspec

from streams.contract.schema import CorrectionRequest, request_decoder
from streams.ports import Record
from streams.retry import retry_forever
from streams.stages.correct import Corrector
from streams.stages.dead_letter import HANDLER_ERROR, UNDECODABLE, DeadLetters

BATCH = 500
# Requests dispatched and not yet done, in all lanes together, above which the consumer
# stops fetching (it resumes below). Bounds the memory a site down for long can take
# (a request is ~1 KB in flight); the other lanes go on until that many wait for it.
WINDOW = 5_000
# Requests of one target site under way at a time. Above a site's configured
# ``concurrency`` (4 by default) so that its budget, not the lane, is what limits it.
LANE_CONCURRENCY = 16
# The sink group's session timeout: how long a killed worker's partitions (its waiting
# corrections) stay with it. 6 s is the least a broker accepts by default
# (``group.min.session.timeout.ms``); faust's own group keeps 10 s. The cost: heartbeats
# every 0.6 s, and a worker whose event loop stalls for 6 s is taken out of the group (a
# rebalance; nothing is lost, its records are handled again).
SINK_SESSION_TIMEOUT_MS = 6_000
# Seconds a rebalance waits for the requests under way; those not started are dropped at
# once (``CorrectLoop.shed``: the partitions' next owner reads them for the first time),
# so this is only for calls in flight. Below the session timeout: a member still in its
# revocation after that is dropped from the group and its partitions move on. After the
# wait what is left is cancelled (the next owner handles it again, once).
REVOKE_WAIT = 4.0


#: Told (site, n) when a site's lane holds n more requests (n < 0: fewer): the worker's
#: demand for that site's API budget (``streams.adapters.kafka.budget``).
BusyHook = Callable[[str, int], None]


class _Lane:
    """The requests of one target site: at most ``concurrency`` under way, the rest queued."""

    def __init__(self, run: Callable[[CorrectionRequest, Record], Awaitable[None]], concurrency: int,
                 busy: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.concurrency = concurrency
        self.queued: collections.OrderedDict[str, tuple[CorrectionRequest, Record, list[asyncio.Future]]] = \
            collections.OrderedDict()
        self.running: dict[str, tuple[asyncio.Task, list[asyncio.Future]]] = {}
        self.busy = busy
        self._told_size = 0

    def _told(self) -> None:
        size = len(self)
        if size != self._told_size and self.busy is not None:
            self.busy(size - self._told_size)
        self._told_size = size

    def submit(self, request: CorrectionRequest, record: Record) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        waiting = self.queued.get(request.key)
        futures = waiting[2] if waiting is not None else []
        futures.append(done)
        self.queued[request.key] = (request, record, futures)  # the latest wins, in the first one's place
        self._start()
        self._told()
        return done

    def _start(self) -> None:
        while len(self.running) < self.concurrency:
            key = next((k for k in self.queued if k not in self.running), None)  # skips at most `concurrency`
            if key is None:
                return
            request, record, futures = self.queued.pop(key)
            task = asyncio.ensure_future(self.run(request, record))
            self.running[key] = (task, futures)
            task.add_done_callback(lambda t, key=key, futures=futures: self._finished(key, t, futures))

    def _finished(self, key: str, task: asyncio.Task, futures: list[asyncio.Future]) -> None:
        del self.running[key]
        for future in futures:
            if future.done():
                continue
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())  # a bug: the consumer raises it
            else:
                future.set_result(None)
        self._start()
        self._told()

    def shed(self) -> None:
        """Drop what waits unstarted (its futures cancelled); what is under way goes on."""
        for _request, _record, futures in self.queued.values():
            for future in futures:
                future.cancel()
        self.queued.clear()
        self._told()

    def cancel(self) -> None:
        self.shed()
        for task, futures in list(self.running.values()):
            task.cancel()
            for future in futures:
                future.cancel()
        self._told()  # the running ones say so again as they finish

    def __len__(self) -> int:
        return len(self.queued) + len(self.running)


class CorrectLoop:
    def __init__(self, corrector: Corrector, dead: DeadLetters, *, concurrency: int = LANE_CONCURRENCY,
                 busy: BusyHook | None = None) -> None:
        self.corrector = corrector
        self.dead = dead
        self.concurrency = concurrency
        self.busy = busy
        self.lanes: dict[str, _Lane] = {}
        self.letters: set[asyncio.Future] = set()

    def dispatch(self, record: Record) -> asyncio.Future:
        """Start handling one record; the future is done once its outcome or dead letter is acknowledged."""
        try:
            request = request_decoder.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            letter = asyncio.ensure_future(
                self.dead.record(record, record.value or b"", UNDECODABLE, f"correction request: {exc}"))
            self.letters.add(letter)
            letter.add_done_callback(self.letters.discard)
            return letter
        link = self.corrector.links.get(request.link)
        site = link.target.site if link is not None else ""  # an unknown link is answered "skipped" at once
        lane = self.lanes.get(site)
        if lane is None:
            hook = (lambda delta, site=site: self.busy(site, delta)) if self.busy is not None and site else None
            lane = self.lanes[site] = _Lane(self._one, self.concurrency, hook)
        return lane.submit(request, record)

    async def handle(self, records: list[Record]) -> None:
        """Every outcome (and dead letter) of these records acknowledged, however long Kafka or a site takes."""
        await asyncio.gather(*(self.dispatch(record) for record in records))

    def shed(self) -> None:
        """Drop every request not yet started (a revocation: the partitions' next owner reads
        them for the first time); those under way go on and are waited for."""
        for lane in self.lanes.values():
            lane.shed()

    def cancel(self) -> None:
        """Drop everything under way or queued (its partitions went to another member, which handles it again)."""
        for lane in self.lanes.values():
            lane.cancel()
        for letter in list(self.letters):
            letter.cancel()

    def queued(self) -> dict[str, int]:
        """Requests in each site's lane (queued or under way): ``/health``."""
        return {site: len(lane) for site, lane in self.lanes.items() if len(lane)}

    async def _one(self, request: CorrectionRequest, record: Record) -> None:
        try:
            await retry_forever(lambda: self.corrector.handle(request), f"correction of {request.key}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not transient: retry_forever retries those and lets only the rest out
            reason = f"{type(exc).__name__}: {exc}"
            await self.dead.record(record, record.value or b"", HANDLER_ERROR, reason)
            await self.corrector.dead_lettered(request, reason)

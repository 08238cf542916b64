"""faust's aiokafka transport with a short fetch wait, so a catching-up fold never idles.

aiokafka keeps one fetch in flight per broker and leaves out of it every partition whose
records are still buffered. When a fetch goes out while all the fold's busy partitions
are buffered, it holds only idle partitions (the assignor's topic, caught-up ones) and
the broker keeps it for the full ``fetch_max_wait_ms``. The buffers drain long before
that, yet no new fetch may go out until this one returns: the fold sits idle. faust
hard-codes that wait at 1,500 ms, and the fold bench showed it: pauses of ~1.4 s every
~20k events on most runs, the wall rate down from ~55k to 14k-22k events/s. 100 ms
bounds such a pause at a few batches' worth of time and costs an idle worker ten small
requests a second. The route and sink stages' own consumers use the same wait.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 100


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher; faust passes no option
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    """``faust.App`` whose consumer transport is :class:`Transport`."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

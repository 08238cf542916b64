"""``usync worker``: create the topics (waiting for Kafka), then run the faust worker."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from streams.app import create_app
from streams.contract.config import Config
from streams.adapters.kafka.topics import wait_for_topics

log = logging.getLogger("usync.worker")

GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections. The fold allocates a few objects per event and
    frees them all (nothing it builds forms cycles), yet with the default threshold the
    collector ran every 700 allocations and rescanned every long-lived faust and
    aiokafka object each time it reached the oldest generation: about a fifth of a busy
    worker's CPU. Freezing what start-up built takes those out of every scan."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


def run_worker(config: Config, *, store: str, web_port: int | None, data_dir: str | None,
               loglevel: str = "info", reconcile: bool = True, logging_config: dict | None = None) -> int:
    asyncio.run(wait_for_topics(config, worker=True))  # Kafka down at start is waited for
    asyncio.set_event_loop(asyncio.new_event_loop())  # faust runs its own loop; asyncio.run closed ours
    usync = create_app(config, store=store, web_port=web_port, data_dir=data_dir, reconcile=reconcile)
    # logging_config: faust replaces the root handlers; this keeps --log-format and secret masking.
    worker = faust.Worker(usync.app, loglevel=loglevel, logging_config=logging_config)
    # faust's terminal spinner (on at --log-level warning) sets the root logger to DEBUG, and
    # every record sent then builds a debug LogRecord: a quarter of a busy worker's time.
    worker.spinner = None
    tune_gc()
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0

"""``usync worker``: create the topics (waiting for Kafka), then run the faust worker."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams.app import create_app
from streams.config import Config
from streams.kafka import ensure_topics
from streams.retry import Backoff

log = logging.getLogger("usync.worker")


async def wait_for_topics(config: Config) -> None:
    """Invariant 5: Kafka down at start is waited for, with the project's backoff."""
    backoff = Backoff()
    while True:
        try:
            await ensure_topics(config, worker=True)
            return
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning("Kafka not ready (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)


def run_worker(config: Config, *, store: str, web_port: int | None, data_dir: str | None,
               loglevel: str = "info", reconcile: bool = True, logging_config: dict | None = None) -> int:
    asyncio.run(wait_for_topics(config))
    asyncio.set_event_loop(asyncio.new_event_loop())  # faust runs its own loop; asyncio.run closed ours
    usync = create_app(config, store=store, web_port=web_port, data_dir=data_dir, reconcile=reconcile)
    # logging_config: faust replaces the root handlers; this keeps --log-format and secret masking.
    worker = faust.Worker(usync.app, loglevel=loglevel, logging_config=logging_config)
    # faust's terminal spinner (on at --log-level warning) sets the root logger to DEBUG, and
    # every record sent then builds a debug LogRecord: a quarter of a busy worker's time.
    worker.spinner = None
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0

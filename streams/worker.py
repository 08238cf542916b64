"""``usync worker``: create the topics (waiting for Kafka), then run the faust worker."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust
from aiohttp import web

from streams.app import create_app
from streams.contract.config import Config
from streams.adapters.kafka.client import KafkaAccess, client_options
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
    access = KafkaAccess(client_options(config))
    port = web_port if web_port is not None else config.web_port
    asyncio.run(_topics_with_health(config, access, port))  # Kafka down or refusing at start is waited for
    asyncio.set_event_loop(asyncio.new_event_loop())  # faust runs its own loop; asyncio.run closed ours
    usync = create_app(config, store=store, web_port=web_port, data_dir=data_dir, reconcile=reconcile, access=access)
    # logging_config: faust replaces the root handlers; this keeps --log-format and secret masking.
    worker = faust.Worker(usync.app, loglevel=loglevel, logging_config=logging_config)
    # faust's terminal spinner (on at --log-level warning) sets the root logger to DEBUG, and
    # every record sent then builds a debug LogRecord: a quarter of a busy worker's time.
    worker.spinner = None
    tune_gc()
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0


async def _topics_with_health(config: Config, access: KafkaAccess, port: int) -> None:
    """Create the topics, however long Kafka is away or refuses us, while ``/health`` on the
    worker's port already says so (faust's web server, on the same port, starts after)."""
    runner = web.AppRunner(_waiting_app(access), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.web_host, port).start()
    except OSError as exc:  # the port is taken: faust's own start will say so loudly
        log.warning("no /health while waiting for Kafka: %s", exc)
    try:
        await wait_for_topics(config, worker=True, access=access)
    finally:
        await runner.cleanup()


def _waiting_app(access: KafkaAccess) -> web.Application:
    """``/health`` (200, degraded) and ``/health/ready`` (503) before the worker runs: the
    shape of ``streams.stages.web.Views`` with only Kafka's state known."""
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "degraded", "ready": False, "kafka": access.report(),
                                  "router_connected": False, "sink_connected": False, "tables": "waiting-for-kafka"})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": False, "components": {"kafka": {"state": access.report()["state"]}}},
                                 status=503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/live", live)
    return app


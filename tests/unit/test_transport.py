"""The worker's faust consumer fetches with a short wait (see streams.adapters.faust.app)."""

from __future__ import annotations

from streams.app import create_app
from streams.contract.config import parse_config
from streams.adapters.faust.app import FETCH_MAX_WAIT_MS

CONFIG = '[sites.a]\napi_url = "http://127.0.0.1:9/api/"\ntoken_env = "TOKEN"\n'


async def test_the_workers_consumer_waits_briefly_for_fetches():
    app = create_app(parse_config(CONFIG, {"TOKEN": "t"}), store="memory").app
    thread = app.consumer._thread  # noqa: SLF001
    consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001 (built, never started: no I/O)
    try:
        assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500  # noqa: SLF001 (faust's own is 1,500)
    finally:
        await consumer.stop()  # never started: closed so that no finaliser complains
        thread.thread_loop.close()  # the consumer thread's own loop, never run

"""CPU per HTTP call of the clients usync could use, against the simulator (not part of pytest).

    .local/venv/bin/python bench/bench_http.py [--calls 3000] [--rounds 3] [--concurrency 16]

The simulated site runs in a process of its own; each client below GETs one offering user
(``marketplace-offering-users/<uuid>/``, ~600 B of JSON) ``--calls`` times, ``--concurrency``
at a time (a correct-stage lane's width), over keep-alive connections, and the figure is
this process's CPU per call (``time.process_time``: robust to the box's other load) and the
calls per second. The clients run in turn, ``--rounds`` times (ranges over the rounds):

- ``httpx``: a bare ``httpx.AsyncClient`` (httpcore's pool), the body decoded with msgspec;
- ``aiohttp``: a bare ``aiohttp.ClientSession``;
- ``httpx-aiohttp``: an ``httpx.Request`` through ``httpx_aiohttp.AiohttpTransport`` (usync's
  transport before issue 28);
- ``usync``: ``SiteClient.get_offering_user`` as the correct stage calls it (token bucket,
  concurrency slots, retries' bookkeeping, the call counter, the record decoded);
- ``protocol``: a keep-alive HTTP/1.1 exchange on an ``asyncio.Protocol`` with the request
  bytes prebuilt and the response cut by its Content-Length: what no general-purpose client
  gets below (not something usync should ship; it shows the floor of Python + asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
ROOT = Path(os.environ.get("USYNC_BENCH_TREE") or HERE).resolve()
if "--tree" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import msgspec  # noqa: E402

from streams.contract.config import Rates, Secret  # noqa: E402
from streams.contract.schema import OfferingUserRecord  # noqa: E402
from streams.metrics import Metrics  # noqa: E402
from streams.worker import tune_gc  # noqa: E402

_record = msgspec.json.Decoder(OfferingUserRecord)


async def _site(n: int, conn: Any) -> None:
    from waldursim import Federation

    async with Federation(broker_enabled=False, seed=1, publish_rate=0) as sim:
        site = sim.add_site("a")
        await sim.start()
        sp, customer = site.create_customer("sp"), site.create_customer("c", owners=[])
        offering, project = site.create_offering(sp, "hpc"), site.create_project(customer, "p")
        site.create_resource(offering, project, backend_id="x")
        site.events_enabled = False
        uuids = [site.add_project_member(site.create_user(f"u{i}"), project)[0].uuid for i in range(n)]
        conn.send((site.url, site.staff_token, uuids))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def _run_site(n: int, conn: Any) -> None:
    asyncio.run(_site(n, conn))


async def _many(call: Any, paths: list[str], concurrency: int) -> None:
    queue = iter(paths)

    async def worker() -> None:
        for path in queue:
            await call(path)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Protocol(asyncio.Protocol):
    """One keep-alive connection: a request out, its response in by Content-Length."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        length = int(head[start + 15:head.find(b"\r\n", start) if b"\r\n" in head[start:] else None])
        if len(self.buffer) >= end + 4 + length:
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.waiter.set_result((int(head[9:12]), body))
            self.waiter = None

    async def get(self, request: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return await self.waiter


async def clients(url: str, token: str, concurrency: int) -> dict[str, tuple[Any, Any]]:
    """name -> (call(path), close())."""
    from streams.adapters.waldur import SiteClient

    headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
    plain = httpx.AsyncClient(base_url=url, headers=headers, limits=httpx.Limits(max_connections=concurrency))

    async def httpx_call(path: str) -> None:
        response = await plain.get(path)
        _record.decode(response.content)

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    async def aiohttp_call(path: str) -> None:
        async with session.get(url + path, headers=headers) as response:
            _record.decode(await response.read())

    from httpx_aiohttp import AiohttpTransport
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=concurrency))
    xheaders = httpx.Headers(headers)

    async def bridged_call(path: str) -> None:
        response = await transport.handle_async_request(httpx.Request("GET", url + path, headers=xheaders))
        try:
            _record.decode(await response.aread())
        finally:
            await response.aclose()

    rates = Rates(requests_per_second=1e6, burst=100_000, concurrency=concurrency, timeout=10.0)
    site = SiteClient("a", url, Secret(token), rates, Metrics())

    async def usync_call(path: str) -> None:
        await site.get_offering_user(path.rsplit("/", 2)[-2])

    host, port = httpx.URL(url).host, httpx.URL(url).port
    loop = asyncio.get_running_loop()
    pool: list[Protocol] = [(await loop.create_connection(Protocol, host, port))[1] for _ in range(concurrency)]
    base = httpx.URL(url).raw_path.decode()
    head = f"Host: {host}:{port}\r\nAuthorization: Token {token}\r\nAccept: application/json\r\n\r\n".encode()

    async def protocol_call(path: str) -> None:
        connection = pool.pop()
        try:
            _status, body = await connection.get(f"GET {base}{path} HTTP/1.1\r\n".encode() + head)
            _record.decode(body)
        finally:
            pool.append(connection)

    async def close_protocol() -> None:
        for connection in pool:
            connection.transport.close()  # type: ignore[union-attr]

    made = {"httpx": (httpx_call, plain.aclose), "aiohttp": (aiohttp_call, session.close),
            "httpx-aiohttp": (bridged_call, transport.aclose), "usync": (usync_call, site.close),
            "protocol": (protocol_call, close_protocol)}
    made.update(await _optional(url, headers, concurrency))
    return made


async def _optional(url: str, headers: dict[str, str], concurrency: int) -> dict[str, tuple[Any, Any]]:
    """Clients not in usync's dependencies, measured when installed: pyreqwest (Rust's reqwest
    and hyper, a tokio runtime in threads of this process) and aiosonic (pure Python)."""
    made: dict[str, tuple[Any, Any]] = {}
    try:
        from pyreqwest.client import ClientBuilder
    except ImportError:
        pass
    else:
        client = ClientBuilder().default_headers(headers).max_connections(concurrency).build()

        async def reqwest_call(path: str) -> None:
            response = await client.get(url + path).build().send()
            _record.decode(bytes(await response.bytes()))

        made["pyreqwest"] = (reqwest_call, client.close)
    try:
        import aiosonic
    except ImportError:
        pass
    else:
        sonic = aiosonic.HTTPClient(aiosonic.connectors.TCPConnector(pool_configs={
            ":default": aiosonic.pools.PoolConfig(size=concurrency)}))

        async def sonic_call(path: str) -> None:
            response = await sonic.get(url + path, headers=headers)
            _record.decode(await response.content())

        async def sonic_close() -> None:
            await sonic.connector.cleanup()

        made["aiosonic"] = (sonic_call, sonic_close)
    return made


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tree", type=Path)
    args = parser.parse_args()
    tune_gc()
    print(f"tree: {ROOT}; load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    fork = multiprocessing.get_context("fork")
    parent, child = fork.Pipe()
    site = fork.Process(target=_run_site, args=(500, child), daemon=True)
    site.start()
    try:
        url, token, uuids = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        paths = [f"marketplace-offering-users/{uuids[i % len(uuids)]}/" for i in range(args.calls)]
        made = await clients(url, token, args.concurrency)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in made}
        for name, (call, _close) in made.items():  # warm: connections made, code paths run once
            await _many(call, paths[:200], args.concurrency)
        for _ in range(args.rounds):
            for name, (call, _close) in made.items():
                began, cpu = time.perf_counter(), time.process_time()
                await _many(call, paths, args.concurrency)
                elapsed, used = time.perf_counter() - began, time.process_time() - cpu
                figures[name].append((args.calls / elapsed, used / args.calls * 1e6))
        for name, (_call, close) in made.items():
            await close()
        print(f"{args.calls:,} GETs of one offering user, {args.concurrency} at a time, {args.rounds} rounds; "
              f"this process's CPU per call (the site's process excluded):")
        for name, runs in figures.items():
            rates, cpus = [r for r, _ in runs], [c for _, c in runs]
            print(f"  {name:<14} {min(cpus):6.0f}-{max(cpus):<6.0f} µs CPU per call   "
                  f"{min(rates):7,.0f}-{max(rates):<7,.0f} calls/s")
        parent.send("done")
    finally:
        site.join(10)
        if site.is_alive():
            site.kill()


if __name__ == "__main__":
    asyncio.run(main())

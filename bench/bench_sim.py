"""The simulator's cost per request as its offering grows (issue 15: Waldur's indexed queries
do not grow with the offering, so the stand-in must not either).

    .local/venv/bin/python bench/bench_sim.py                      # 1k / 10k / 100k users, 300 requests each
    .local/venv/bin/python bench/bench_sim.py --users 1000,100000 --requests 500

One site (no broker: REST only), one offering with N users, as the staff user; per size,
``--requests`` sequential requests of each kind, each for a different user (so the
listing cache never answers), after 20 unmeasured ones:

- ``user_username``: ``GET /api/marketplace-offering-users/?offering_uuid=…&user_username=…``
- ``uuid``: ``GET /api/marketplace-offering-users/{uuid}/``
- ``user_uuid``: ``GET /api/marketplace-offering-users/?offering_uuid=…&user_uuid=…``

Printed per kind: the median server time (the site's call log: from the request reaching
the handler chain to the answer, without the HTTP parsing either side) and the median
round trip seen by the client (aiohttp client and server in one process, loopback), then
the ratio of the server median at the largest size to the smallest. Goal: within 1.5x.
The box is a shared 2-core machine: run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from waldursim import Federation, OfferingUserState  # noqa: E402

KINDS = ("user_username", "uuid", "user_uuid")
WARM_UP = 20


def populate(site: Any, users: int) -> tuple[str, list[tuple[str, str, str]]]:
    """One offering with ``users`` OK offering users, loaded without events; returns the
    offering uuid and (offering user uuid, user uuid, user username) per user."""
    store = site.store
    offering = store.create_offering(store.create_customer("provider"), "hpc")
    rows = []
    for i in range(users):
        user = store.create_user(f"user{i:06d}")
        ou = store.create_offering_user(offering, user, username=f"u{i:06d}", state=OfferingUserState.OK, emit=False)
        rows.append((ou.uuid, user.uuid, user.username))
    return offering.uuid, rows


def _url(site: Any, kind: str, offering: str, row: tuple[str, str, str]) -> str:
    base = f"{site.url}marketplace-offering-users/"
    if kind == "uuid":
        return f"{base}{row[0]}/"
    if kind == "user_uuid":
        return f"{base}?offering_uuid={offering}&user_uuid={row[1]}"
    return f"{base}?offering_uuid={offering}&user_username={row[2]}"


async def _timed_get(http: aiohttp.ClientSession, url: str, expect: str) -> float:
    t0 = time.perf_counter()
    async with http.get(url) as r:
        body = await r.read()
        assert r.status == 200 and expect.encode() in body, (r.status, body[:200])
    return time.perf_counter() - t0


async def measure(sizes: list[int], requests: int, seed: int = 1) -> dict[int, dict[str, dict[str, float]]]:
    """{size: {kind: {"server_ms", "client_ms"}}} (medians), one site per size.

    The sizes take turns request by request, so a burst of load from elsewhere on the
    shared box lands on every size alike (measured one size after the other, the 100k/1k
    ratio of an O(1) GET moved between 1.0x and 1.9x from run to run)."""
    federation = Federation(broker_enabled=False, publish_rate=0)
    loaded = {}
    for n in sizes:
        site = federation.add_site(f"n{n}")
        offering, rows = populate(site, n)
        chosen = random.Random(seed).sample(rows, min(requests + WARM_UP, n))
        loaded[n] = (site, offering, chosen)
    await federation.start()
    out: dict[int, dict[str, dict[str, float]]] = {n: {} for n in sizes}
    try:
        for kind in KINDS:
            async with aiohttp.ClientSession() as http:
                trips: dict[int, list[float]] = {n: [] for n in sizes}
                for i in range(requests + WARM_UP):
                    if i == WARM_UP:  # the first requests of a kind pay for imports and caches
                        for site, _offering, _chosen in loaded.values():
                            site.calls.reset()
                        trips = {n: [] for n in sizes}
                    for n, (site, offering, chosen) in loaded.items():
                        row = chosen[i % len(chosen)]
                        http.headers["Authorization"] = f"Token {site.staff_token}"
                        trips[n].append(await _timed_get(http, _url(site, kind, offering, row), row[0]))
            for n, (site, _offering, _chosen) in loaded.items():
                out[n][kind] = {"server_ms": statistics.median(c.duration for c in site.calls.log) * 1000,
                                "client_ms": statistics.median(trips[n]) * 1000}
    finally:
        await federation.stop()
    return out


async def main_async(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.users.split(",")]
    t0 = time.perf_counter()
    results = await measure(sizes, args.requests)
    print(f"{args.requests} requests of each kind per size, sizes interleaved "
          f"({time.perf_counter() - t0:.1f} s incl. loading)")
    for n in sizes:
        print(f"N={n:>7,}: " + "  ".join(
            f"{k} {v['server_ms']:.3f} ms server / {v['client_ms']:.3f} ms round trip" for k, v in results[n].items()))
    lo, hi = sizes[0], sizes[-1]
    ratios = {k: results[hi][k]["server_ms"] / results[lo][k]["server_ms"] for k in KINDS}
    print(f"{hi:,}/{lo:,} server-time ratio: " + "  ".join(f"{k} {r:.2f}x" for k, r in ratios.items())
          + f"  (goal <= 1.5x: {'met' if max(ratios.values()) <= 1.5 else 'NOT met'})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="1000,10000,100000", help="users in the offering, comma-separated")
    p.add_argument("--requests", type=int, default=300, help="requests of each kind per size")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

"""The bridge's registration calls count against the site's API budget (issue 16): paced by
the site's registration bucket, against a simulated site on the real RabbitMQ."""

from __future__ import annotations

import time

from bridges.registration import register
from streams.adapters.budget import registration_bucket
from streams.contract.config import Rates, Secret, Site
from tests.app.test_federation import busiest_second
from tests.bridge.harness import populate
from tests.support.sim import sim_federation  # noqa: F401  (fixture)

OFFERINGS = 4


async def test_registration_calls_are_paced_at_the_bridges_share_of_the_sites_rates(sim_federation):  # noqa: F811
    sim_federation.add_site("a")
    world = populate(sim_federation, sites=("a",), offerings=OFFERINGS, users=1)
    await sim_federation.start()
    site = sim_federation["a"]
    rates = Rates(requests_per_second=20.0, burst=20)
    config = Site(api_url=site.url, token_env="UNUSED", register=True, rates=rates)
    bucket = registration_bucket(rates)
    since = time.time()

    credentials = await register("a", config, Secret(world.tokens["a"]), world.offerings["a"], bucket)

    assert sum(len(c.queues) for c in credentials) == OFFERINGS
    calls = sorted(c.time for c in site.calls.log if c.time >= since and c.path.startswith("/api/"))
    assert len(calls) >= 3 * OFFERINGS  # identity (found or made), subscription, queue: per offering
    assert bucket.rate == 2.0 and bucket.burst == 2.0  # 10 % of 20/s and of 20 for each of two bridges
    assert busiest_second(site, since) <= bucket.rate + bucket.burst
    # paced, not sent at once: all but the banked tokens waited for the rate
    assert calls[-1] - calls[0] >= 0.9 * (len(calls) - bucket.burst) / bucket.rate

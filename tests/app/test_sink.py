"""The sink against the simulator over HTTP: one verification covers the requests raised before it."""

from __future__ import annotations

import time

from streams.config import parse_config
from streams.metrics import Metrics
from streams.schema import OutcomeAction
from streams.sink import CorrectionRequest, Sink
from streams.waldur import Clients
from waldursim import Federation


async def test_a_request_about_facts_older_than_a_verification_costs_no_call():
    async with Federation(broker_enabled=False, seed=1, publish_rate=0) as sim:
        a, b = sim.add_site("a"), sim.add_site("b")
        await sim.start()
        offerings, projects = {}, {}
        for site in (a, b):
            sp, customer = site.create_customer("sp"), site.create_customer("c", owners=[])
            offerings[site.name] = site.create_offering(sp, "hpc")
            projects[site.name] = site.create_project(customer, "p")
            site.create_resource(offerings[site.name], projects[site.name], backend_id="x")
        [a_ou] = a.add_project_member(a.create_user("nina"), projects["a"])
        [b_ou] = b.add_project_member(b.create_user("nina"), projects["b"])
        b.set_username(b_ou, "nina_b")
        config = parse_config(f"""
[sites.a]
api_url = "{a.url}"
token_env = "A"
[sites.b]
api_url = "{b.url}"
token_env = "B"
[[links]]
name = "hpc"
target = {{ site = "a", offering = "{offerings['a'].uuid}" }}
source = {{ site = "b", offering = "{offerings['b'].uuid}" }}
""", {"A": a.staff_token, "B": b.staff_token})
        records: list[bytes] = []

        async def emit(key: bytes, value: bytes) -> None:
            records.append(value)

        clients = Clients(config, Metrics())
        sink = Sink({"hpc": config.links[0]}, clients, Metrics(), emit, emit)
        try:
            def request(observed_at: int) -> CorrectionRequest:
                return CorrectionRequest(link="hpc", user_username="nina", a_offering_user_uuid=a_ou.uuid,
                                         b_offering_user_uuid=b_ou.uuid, desired="nina_b", observed_at=observed_at)

            before = int(time.time() * 1_000_000)
            first = await sink.handle(request(before))
            calls = len(a.calls.log) + len(b.calls.log)
            echo = await sink.handle(request(before + 1))  # e.g. B's second event for the same change
            assert (first.action, echo.action) == (OutcomeAction.CORRECTED, OutcomeAction.SKIPPED)
            assert len(a.calls.log) + len(b.calls.log) == calls  # no call for the covered request

            b.set_username(b_ou, "nina_new")  # a change after the verification is verified again
            later = await sink.handle(request(int(time.time() * 1_000_000)))
            assert later.action is OutcomeAction.CORRECTED
            assert a.offering_user(a_ou).username == "nina_new"
        finally:
            await clients.close()

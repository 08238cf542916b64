"""The sink against the simulator over HTTP: one verification covers the requests raised before it."""

from __future__ import annotations

import time

from streams.metrics import Metrics
from streams.contract.schema import OutcomeAction
from streams.contract.schema import CorrectionRequest
from streams.stages.correct import Corrector
from streams.adapters.waldur import Clients
from tests.app.harness import LinkSpec, make_setup
from waldursim import Federation


async def test_a_request_about_facts_older_than_a_verification_costs_no_call(tmp_path):
    async with Federation(broker_enabled=False, seed=1, publish_rate=0) as sim:
        s = make_setup(sim, tmp_path)
        await sim.start()
        a_ou, b_ou = s.add_user("nina")
        s.b.set_username(b_ou, "nina_b")
        config = s.config(s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False))
        records: list[bytes] = []

        async def emit(key: bytes, value: bytes) -> None:
            records.append(value)

        clients = Clients(config, Metrics())
        sink = Corrector({"hpc": config.links[0]}, clients, Metrics(), emit, emit)
        try:
            def request(observed_at: int) -> CorrectionRequest:
                return CorrectionRequest(link="hpc", user_username="nina", a_offering_user_uuid=a_ou.uuid,
                                         b_offering_user_uuid=b_ou.uuid, desired="nina_b", observed_at=observed_at)

            before = int(time.time() * 1_000_000)
            first = await sink.handle(request(before))
            calls = len(s.a.calls.log) + len(s.b.calls.log)
            echo = await sink.handle(request(before + 1))  # e.g. B's second event for the same change
            assert (first.action, echo.action) == (OutcomeAction.CORRECTED, OutcomeAction.SKIPPED)
            assert len(s.a.calls.log) + len(s.b.calls.log) == calls  # no call for the covered request

            s.b.set_username(b_ou, "nina_new")  # a change after the verification is verified again
            later = await sink.handle(request(int(time.time() * 1_000_000)))
            assert later.action is OutcomeAction.CORRECTED
            assert s.a.offering_user(a_ou).username == "nina_new"
        finally:
            await clients.close()

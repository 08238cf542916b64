"""``usync audit`` over a site-day of changes, at the site's rate budget (issue 26, item 4: goal <= 1 minute).

    .local/venv/bin/python bench/bench_audit_site.py                        # 10,000 changes, 20 requests/s
    .local/venv/bin/python bench/bench_audit_site.py --changes 100000 --noise 2

What a site-day is here: ``--changes`` username changes on site A (default 10,000: the
capacity plan's average target site sees 10 changes/s x 5 links / 1,000 sites x 86,400 s =
~4,300 corrections a day), spread evenly over the last 24 h. Loaded before the clock runs:

- the simulated site A (REST only, no broker): one offering of ``--changes`` users, and in
  its event log one ``marketplace_offering_user_updated`` per change (usync's PATCH, the
  staff user as actor), at its time;
- Kafka topics of their own, every record stamped with its time (Kafka's time index is what
  the audit seeks by): a ``corrected`` outcome per change, A's two broker events of it
  (``update``, ``username_set``), and ``--noise`` envelopes of another site per change (the
  events topic of a federation is mostly other sites' records).

Then ``usync audit --site a --json`` runs as a subprocess (its own CPU is measured, not the
simulator's) with the site's budget ``--rate`` requests/s and burst 20. Printed: wall time,
the audit's CPU time, the event-log calls and the time the bucket alone needs for them, the
groups (every change must be matched), and the load (``os.getloadavg``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.adapters.kafka.topics import ensure_topics  # noqa: E402
from streams.contract.config import load_config  # noqa: E402
from streams.contract.schema import (  # noqa: E402
    Envelope, OfferingUserEvent, Origin, Outcome, OutcomeAction, envelope_encoder, outcome_encoder,
)
from tests.support.services import KAFKA_BOOTSTRAP  # noqa: E402  (the port offset's Kafka)
from waldursim import Federation, OfferingUserState  # noqa: E402
from waldursim.eventlog import username_updated  # noqa: E402

DAY = timedelta(hours=1) * 24


def load_site(site: Any, changes: int, start: datetime) -> tuple[str, str, list[tuple[str, str, str, str, datetime]]]:
    """One offering of ``changes`` users on A, and a username change of each in its event log."""
    store = site.store
    customer = store.create_customer("provider")
    offering = store.create_offering(customer, "hpc")
    staff = {"user_uuid": site.staff.uuid, "user_username": "staff", "user_full_name": "Staff", "ip_address": "10.0.0.5"}
    made = []
    for i in range(changes):
        user = store.create_user(f"user{i:06d}")
        ou = store.create_offering_user(offering, user, username=f"u{i:06d}_b", state=OfferingUserState.OK, emit=False)
        at = start + DAY * (i + 0.5) / changes
        username_updated(store.event_log, ou.uuid, f"u{i:06d}_old", ou.username,
                         {"offering_uuid": offering.uuid, "offering_name": "hpc", "customer_uuid": customer.uuid},
                         {"affected_user_uuid": user.uuid, "affected_user_username": user.username},
                         (offering.uuid, customer.uuid), staff, created=at)
        made.append((ou.uuid, user.uuid, user.username, f"u{i:06d}_old", at))
    return offering.uuid, customer.uuid, made


def config_text(site: Any, offering: str, suffix: str, rate: float) -> str:
    return (f'app_id = "bench-audit-{suffix}"\n[kafka]\nbootstrap_servers = "{KAFKA_BOOTSTRAP}"\n'
            f'events_topic = "bench-audit-{suffix}.events"\ndlq_topic = "bench-audit-{suffix}.dlq"\n'
            f'outcomes_topic = "bench-audit-{suffix}.outcomes"\npartitions = 8\n'
            f'[sites.a]\napi_url = "{site.url}"\ntoken_env = "BENCH_TOKEN_A"\n'
            f'rates = {{ requests_per_second = {rate}, burst = 20, concurrency = 8 }}\n'
            f'[sites.b]\napi_url = "http://127.0.0.1:9/api/"\ntoken_env = "BENCH_TOKEN_A"\n'
            f'[[links]]\nname = "hpc"\ntarget = {{ site = "a", offering = "{offering}" }}\n'
            f'source = {{ site = "b", offering = "{"b" * 32}" }}\n')


async def fill_topics(config: Any, offering: str, made: list[tuple[str, str, str, str, datetime]], noise: int) -> int:
    """The topics of a site-day, each record stamped with its own time; returns how many were written."""
    await ensure_topics(config)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, linger_ms=20, max_batch_size=512 * 1024, acks=1)
    await producer.start()
    sent = 0
    try:
        pending = []
        for ou_uuid, user_uuid, name, old, at in made:
            new = f"{name.replace('user', 'u')}_b"
            ms = int(at.timestamp() * 1000)
            outcome = Outcome(link="hpc", user_username=name, action=OutcomeAction.CORRECTED, desired=new, observed=old,
                              http_status=200, offering_user_uuid=ou_uuid, at=at + timedelta(milliseconds=4))
            pending.append(await producer.send(config.kafka.outcomes_topic, outcome_encoder.encode(outcome),
                                               key=f"hpc:{name}".encode(), timestamp_ms=ms + 4))
            for n, action in enumerate(("update", "username_set")):
                body = OfferingUserEvent(action=action, offering_user_uuid=ou_uuid, user_uuid=user_uuid,
                                         offering_uuid=offering, username=new, state="OK" if n == 0 else 5,
                                         changed_fields=["username"] if n == 0 else None)
                envelope = Envelope(event_id=uuid.uuid4().hex, site="a", origin=Origin.STOMP, offering_uuid=offering,
                                    received_at=at + timedelta(milliseconds=20 + n), body=body)
                pending.append(await producer.send(config.kafka.events_topic, envelope_encoder.encode(envelope),
                                                   key=f"a:{offering}".encode(), timestamp_ms=ms + 20 + n))
            for n in range(noise):
                other = Envelope(event_id=uuid.uuid4().hex, site="b", origin=Origin.STOMP, offering_uuid="b" * 32,
                                 received_at=at, body=OfferingUserEvent(action="update", offering_user_uuid=uuid.uuid4().hex,
                                                                        user_uuid=user_uuid, username=f"x{n}"))
                pending.append(await producer.send(config.kafka.events_topic, envelope_encoder.encode(other),
                                                   key=f"b:{'b' * 32}".encode(), timestamp_ms=ms))
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                sent, pending = sent + len(pending), []
        await asyncio.gather(*pending)
        return sent + len(pending)
    finally:
        await producer.stop()


def audit(path: Path, token: str, since: datetime, until: datetime) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """``usync audit`` as a subprocess: (its result, wall seconds, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([str(ROOT / ".local/venv/bin/usync"), "audit", "--config", str(path), "--site", "a",
                           "--since", since.isoformat(), "--until", until.isoformat(), "--json"],
                          capture_output=True, text=True, env={**os.environ, "BENCH_TOKEN_A": token}, timeout=900)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def main(args: argparse.Namespace) -> int:
    federation = Federation(broker_enabled=False, publish_rate=0)
    site = federation.add_site("a")
    await federation.start()
    try:
        start = datetime.now(timezone.utc) - DAY
        t0 = time.monotonic()
        offering, _, made = load_site(site, args.changes, start)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "usync.toml"
            path.write_text(config_text(site, offering, uuid.uuid4().hex[:8], args.rate))
            config = load_config(path, {"BENCH_TOKEN_A": site.staff_token})
            records = await fill_topics(config, offering, made, args.noise)
            print(f"loaded {args.changes:,} changes, {records:,} Kafka records in {time.monotonic() - t0:.1f} s", flush=True)
            done, wall, cpu = await asyncio.to_thread(audit, path, site.staff_token, start, start + DAY)
        groups: dict[str, int] = {}
        for line in done.stdout.splitlines():
            group = json.loads(line)["group"]
            groups[group] = groups.get(group, 0) + 1
        calls = site.calls.count("GET /api/events/")
        floor = max(0.0, (calls - 20) / args.rate)
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(no summary)")
        print(f"audit: changes={args.changes} calls={calls} wall_s={wall:.1f} cpu_s={cpu:.1f} bucket_floor_s={floor:.1f} "
              f"rate={args.rate:g} matched={groups.get('matched', 0)} only_waldur={groups.get('only-waldur', 0)} "
              f"only_usync={groups.get('only-usync', 0)} load={os.getloadavg()[0]:.1f} goal_wall_s=60")
        return 0 if groups.get("matched") == args.changes and len(groups) == 1 else 1
    finally:
        await federation.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10_000, help="username changes in the site-day")
    parser.add_argument("--rate", type=float, default=20.0, help="the site's requests per second (Rates default 20)")
    parser.add_argument("--noise", type=int, default=5, help="envelopes of another site per change on the events topic")
    sys.exit(asyncio.run(main(parser.parse_args())))

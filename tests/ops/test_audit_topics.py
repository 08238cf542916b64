"""The audit readers' view of one pipeline run (real Kafka, real RabbitMQ, the bridge, a worker,
the simulator): ``usync audit`` sorts a site's changes into its three groups, and a reader
that is not usync (Debian's kcat) reads every permanent topic, keys and headers as documented,
every record valid against ``usync topics schema``.

One run serves both (its minutes are the suite's): usync corrects 50 users on A; an
operator changes 5 usernames on A while A's broker is silent (Waldur logs them, usync never
hears); A then becomes a Waldur that logs no username change and usync corrects 2 more; a
malformed broker message reaches the bridge and a garbage record the events topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import jsonschema
import pika
import pytest
from aiokafka import AIOKafkaProducer

from streams.contract.schema import event_key
from tests.app.harness import ROOT, USYNC, LinkSpec, bridge_and_worker, until, usernames
from tests.app.test_poison_records import dead_letters, read_all
from tests.app.test_resilience import read_outcomes
from tests.support.services import KAFKA_BOOTSTRAP, RABBITMQ
from waldursim import OLDER_WALDUR
from waldursim.eventlog import EVERY_TYPE

pytestmark = pytest.mark.services
CORRECTED, MANUAL, UNLOGGED = range(50), range(50, 55), range(55, 57)
STRAY = b"not a usync record: a stray writer"  # the worker dead-letters it


def name(n: int) -> str:
    return f"u{n:02d}"


def usync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([USYNC, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def kcat(topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` as kcat prints it (-J: topic, partition, offset, key, headers, payload)."""
    done = subprocess.run(["kcat", "-b", KAFKA_BOOTSTRAP, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def headers(record: dict[str, Any]) -> dict[str, str]:
    pairs = record.get("headers") or []
    return dict(zip(pairs[::2], pairs[1::2]))


async def corrected(config: Any, users: range) -> bool:
    done = {o.user_username for o in await read_outcomes(config.kafka.outcomes_topic) if o.action.value == "corrected"}
    return {name(n) for n in users} <= done


async def a_echoes(config: Any, count: int) -> bool:
    """A's broker events of usync's PATCHes are on the events topic (the bridge relayed them)."""
    records = await read_all(config.kafka.events_topic)
    return sum(1 for r in records if r.key.startswith(b"a:") and b'"username_set"' in r.value) >= count


async def write_stray(topic: str, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", request_timeout_ms=10_000)
    await producer.start()
    try:
        await (await producer.send(topic, key=key, value=STRAY))
    finally:
        await producer.stop()


def publish_malformed(site: Any) -> None:
    """A body that is not JSON into the bridge's queue on ``site`` (its DLQ record)."""
    [queue] = site.store.queues.values()
    params = pika.ConnectionParameters("127.0.0.1", RABBITMQ.amqp_port, queue.vhost, pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue.name, b"\x00 not json", pika.BasicProperties(headers={"x-message-id": "f" * 32}))


async def run_pipeline(s: Any, bridge: Any) -> tuple[Any, Any, datetime]:
    pairs = {n: s.add_user(name(n)) for n in range(57)}
    operator = s.a.create_user("operator")
    s.a.add_offering_manager(operator, s.offering_a)
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)])
    config = s.config(path)
    await bridge_and_worker(s, bridge, path)
    since = datetime.now(timezone.utc) - timedelta(seconds=1)

    for n in CORRECTED:
        s.b.set_username(pairs[n][1], f"{name(n)}_b")
    await until(lambda: corrected(config, CORRECTED), 120, "50 corrections on A")
    s.a.events_enabled = False  # Waldur A logs these, its broker stays silent
    async with httpx.AsyncClient(base_url=s.a.url, headers={"Authorization": f"Token {operator.token}"}) as c:
        for n in MANUAL:
            r = await c.patch(f"marketplace-offering-users/{pairs[n][0].uuid}/", json={"username": f"{name(n)}_manual"})
            assert r.status_code == 200
    s.a.events_enabled = True
    s.a.event_log.logged_types = OLDER_WALDUR  # logs no username change
    for n in UNLOGGED:
        s.b.set_username(pairs[n][1], f"{name(n)}_b")
    await until(lambda: corrected(config, UNLOGGED), 60, "2 more corrections on A")
    s.a.event_log.logged_types = EVERY_TYPE
    await until(lambda: a_echoes(config, len(CORRECTED) + len(UNLOGGED)), 60, "A's broker events of the PATCHes")

    publish_malformed(s.b)
    await write_stray(config.kafka.events_topic, event_key("b", s.offering_b.uuid).encode())
    await until(lambda: _letters(config), 60, "a bridge and a worker dead letter")
    return path, pairs, since


async def _letters(config: Any) -> bool:
    letters = await dead_letters(config)
    return any(d.site == "b" for d in letters) and any(d.topic == config.kafka.events_topic for d in letters)


async def test_audit_groups_and_kcat_reads_every_topic(setup, bridge) -> None:
    s = setup
    path, pairs, since = await run_pipeline(s, bridge)
    config = s.config(path)
    assert usernames(s.a, s.offering_a)[name(50)] == "u50_manual"  # usync never heard of it

    # -- usync audit: exactly the three groups -----------------------------------------------
    audited = await asyncio.to_thread(usync, "audit", "--config", str(path), "--site", "a", "--since",
                                      since.isoformat(), env=s.env)
    assert audited.returncode == 1, audited.stderr  # gaps found
    (s.tmp / "audit.jsonl").write_text(audited.stdout)
    found = [json.loads(line) for line in audited.stdout.splitlines()]
    groups = {g: {r["offering_user_uuid"]: r for r in found if r["group"] == g}
              for g in ("matched", "only-waldur", "only-usync")}
    assert set(groups["matched"]) == {pairs[n][0].uuid for n in CORRECTED}
    assert set(groups["only-waldur"]) == {pairs[n][0].uuid for n in MANUAL}
    assert set(groups["only-usync"]) == {pairs[n][0].uuid for n in UNLOGGED}
    assert len(found) == 57
    for n in CORRECTED:
        m = groups["matched"][pairs[n][0].uuid]
        assert (m["old_username"], m["new_username"], m["by_usync"]) == ("", f"{name(n)}_b", True)
        assert m["user_username"] == name(n) and m["broker_event"]  # A's own event of the PATCH, folded
    gap = groups["only-waldur"][pairs[50][0].uuid]
    assert (gap["old_username"], gap["new_username"], gap["actor"]) == ("", "u50_manual", "operator")
    assert groups["only-usync"][pairs[55][0].uuid]["new_username"] == "u55_b"
    assert "50 matched, 5 only in Waldur (broker gaps), 2 only in usync" in audited.stderr

    # -- kcat: every permanent topic, as any Kafka tool reads it --------------------------------
    async with httpx.AsyncClient(timeout=60) as client:  # a checkpoint now, and the user index
        taken = (await client.post(s.workers[0].url + "/usync/checkpoint/")).json()["checkpoints"]
    assert sum(c["rows"] for c in taken) == len(pairs)
    assert (await asyncio.to_thread(usync, "index", "--config", str(path), "--once", env=s.env)).returncode == 0
    schema = json.loads(usync("topics", "schema", env=s.env).stdout)
    for kind, topic in (("checkpoints", config.kafka.checkpoints_topic), ("user-index", config.kafka.user_index_topic)):
        records = kcat(topic)
        assert records, topic
        for record in records:
            jsonschema.validate(json.loads(record["payload"]), schema[kind])
    read = {kind: kcat(topic) for kind, topic in (("events", config.kafka.events_topic),
                                                  ("outcomes", config.kafka.outcomes_topic),
                                                  ("dlq", config.kafka.dlq_topic))}
    (s.tmp / "kcat.jsonl").write_text("".join(json.dumps(r) + "\n" for rs in read.values() for r in rs))
    check_events(read["events"], schema["events"], config.kafka.events_topic)
    check_outcomes(read["outcomes"], schema["outcomes"])
    check_dead_letters(read["dlq"], schema["dlq"], config.kafka.events_topic)


def check_events(records: list[dict[str, Any]], schema: dict[str, Any], topic: str) -> None:
    kinds, strays = set(), 0
    for record in records:
        if record["payload"] == STRAY.decode():
            strays += 1  # not usync's: the worker dead-lettered it
            continue
        value = json.loads(record["payload"])
        jsonschema.validate(value, schema)
        assert record["key"] == f"{value['site']}:{value['offering_uuid']}"
        kinds.add(value["body"]["kind"])
        h = headers(record)
        if value["source"] in ("stomp", "amqp"):  # written by the bridge
            assert {k: h[k] for k in ("usync.event-id", "usync.site", "usync.source", "usync.queue",
                                      "usync.schema-version")} == \
                {"usync.event-id": value["event_id"], "usync.site": value["site"], "usync.source": value["source"],
                 "usync.queue": value["queue"], "usync.schema-version": "1"}
            assert {k.removeprefix("broker."): v for k, v in h.items() if k.startswith("broker.")} == value["headers"]
        else:  # written by the worker: what reconcile listings found, lookups
            assert h == {}, record
    # the start-up pass over an empty table: a listed fact per user, a summary per listing
    assert strays == 1 and {"event", "listed", "listing", "lookup"} <= kinds, (strays, kinds, topic)


def check_outcomes(records: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    assert len(records) >= 52
    for record in records:
        value = json.loads(record["payload"])
        jsonschema.validate(value, schema)
        assert record["key"] == f"{value['link']}:{value['user_username']}" and headers(record) == {}


def check_dead_letters(records: list[dict[str, Any]], schema: dict[str, Any], events_topic: str) -> None:
    bridge, worker = [], []
    for record in records:
        value = json.loads(record["payload"])
        jsonschema.validate(value, schema)
        (bridge if value["site"] else worker).append((record, value))
    [(record, value)] = bridge
    offering = value["queue"].split("_offering_")[1].split("_")[0]
    assert record["key"] == f"b:{offering}"
    assert headers(record) == {"usync.event-id": value["event_id"], "usync.site": "b", "usync.queue": value["queue"],
                               "usync.schema-version": "1", "usync.reason": value["reason"],
                               **{f"broker.{k}": v for k, v in value["headers"].items()}}
    [(record, value)] = worker
    assert value["topic"] == events_topic
    assert record["key"] == value["event_id"] == f"{value['topic']}/{value['partition']}/{value['offset']}"
    assert headers(record) == {} and value["raw"]  # the stray bytes, base64

"""Every codec usync writes with (none, gzip, lz4, zstd) is read back by replay, `usync tail` and a plain consumer."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from datetime import datetime, timezone

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.adapters.kafka.client import client_options
from streams.adapters.kafka.producers import RecordSender
from streams.adapters.kafka.topics import ensure_topics, producer_codec
from streams.contract.config import parse_config
from streams.contract.schema import Envelope, OfferingUserEvent, Origin, envelope_decoder, envelope_encoder, event_key
from streams.replay import replay
from tests.app.harness import USYNC, read_all, until
from tests.support.services import KAFKA_BOOTSTRAP

OFF_A, OFF_B = "a" * 32, "b" * 32


def config_text(suffix: str, codec: str) -> str:
    return f"""app_id = "usync-codec-{suffix}"
[kafka]
bootstrap_servers = "{KAFKA_BOOTSTRAP}"
events_topic = "t-{suffix}.events"
dlq_topic = "t-{suffix}.dlq"
outcomes_topic = "t-{suffix}.outcomes"
partitions = 2
[kafka.compression]
events = "{codec}"
[sites.a]
api_url = "http://127.0.0.1:9/api/"
token_env = "T"
[sites.b]
api_url = "http://127.0.0.1:9/api/"
token_env = "T"
[[links]]
name = "l"
target = {{ site = "a", offering = "{OFF_A}" }}
source = {{ site = "b", offering = "{OFF_B}" }}
"""


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd"])
async def test_records_written_with_each_codec_are_read_back(codec, tmp_path, kafka_bootstrap):
    suffix = uuid.uuid4().hex[:10]
    path = tmp_path / "usync.toml"
    path.write_text(config_text(suffix, codec))
    config = parse_config(path.read_text(), {"T": "x"})
    await ensure_topics(config)
    async def topic_codec() -> str | None:  # a topic just created may answer without its configs for a moment
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, config.kafka.events_topic)
            described = await admin.describe_configs([resource])
            return {entry[0]: entry[1] for d in described for r in d.resources for entry in r[4]}.get("compression.type")
        finally:
            await admin.close()
    assert await until(topic_codec, 30, "the topic's configs") == ("uncompressed" if codec == "none" else codec)

    sender = RecordSender(client_options(config), compression=producer_codec(codec))
    await sender.start()
    now = datetime.now(timezone.utc)
    try:
        for i in range(50):
            envelope = Envelope(event_id=f"e{i}", site="b", origin=Origin.STOMP, offering_uuid=OFF_B, received_at=now,
                                body=OfferingUserEvent(action="update", offering_user_uuid=f"{i:032x}",
                                                       user_uuid="9" * 32, username=f"u{i}", state="OK"))
            await sender.send(config.kafka.events_topic, event_key("b", OFF_B).encode(), envelope_encoder.encode(envelope))
    finally:
        await sender.stop()

    plain = [envelope_decoder.decode(m.value) for m in await read_all(config.kafka.events_topic)]
    assert sorted(e.event_id for e in plain) == sorted(f"e{i}" for i in range(50))
    assert (await replay(config, from_beginning=True)).folded == 50  # parked: no identity yet, but every one folded
    proc = await asyncio.create_subprocess_exec(USYNC, "tail", "--config", str(path), "--topic", "events",
                                                env={"T": "x", "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert len(out.decode().splitlines()) == 50

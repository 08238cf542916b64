"""A fold that raises stops the worker, and nothing past the failed batch is committed.

faust's default supervisor would restart only the fold agent, which then reads on from
its buffered stream past the batch it failed on; faust could later commit past it. The
fold agent runs under a crashing supervisor instead: the worker exits, its supervisor
(systemd, compose) restarts it, and it reads again from the last commit.

A record on the internal by-link topic that is not a list of envelopes (only usync's
route stage writes there, so it stands for a bug) is what makes the fold raise here.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.adapters.kafka.topics import by_link_topic
from tests.app.harness import LinkSpec, until
from tests.support.services import KAFKA_BOOTSTRAP


async def test_a_fold_that_raises_stops_the_worker_without_committing_past_the_batch(setup):
    s = setup
    path = s.write_config([LinkSpec("hpc", s.offering_a, s.offering_b)], broker=False)
    config = s.config(path)
    worker = s.start_worker(path)
    await worker.ready()
    topic = by_link_topic(config)

    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all")
    await producer.start()
    try:
        await until(lambda: producer.partitions_for(topic), 60, "the worker's by-link topic")
        sent = await (await producer.send(topic, key=b"hpc", value=b"not a list of envelopes", partition=0))
    finally:
        await producer.stop()

    await until(lambda: worker.proc.poll() is not None, 90, "the worker to stop on the failed fold")
    assert worker.proc.returncode != 0
    assert "DecodeError" in worker.log_text()

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(config.app_id)
    finally:
        await admin.close()
    position = committed.get(TopicPartition(topic, 0))
    assert position is None or position.offset <= sent.offset, "committed past the batch the fold failed on"

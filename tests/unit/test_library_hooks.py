"""Guards for the private library hooks usync relies on: an upgrade of faust, aiokafka or
pika that removes or reshapes one fails here, loudly, instead of in production.

Nothing connects: objects are built without being started.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from contextvars import ContextVar
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from pika.adapters.asyncio_connection import AsyncioConnection

import faust.streams
from streams.adapters.faust.app import FETCH_MAX_WAIT_MS, App, ConsumerThread, held_back_unless_done
from streams.adapters.faust.recovery import PatientRecovery, PatientTableManager

UNREACHABLE = "127.0.0.1:1"


class StandIn:
    """Any object faust could hold a weak reference to."""


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def message(offset: int = 0) -> Message:
    return Message("t", 0, offset, 0.0, 0, None, b"k", b"v", None)


@pytest.fixture
async def app():
    """A faust App as streams.app builds it (our transport and table manager), never started."""
    from streams.adapters.faust.tables import LinkTable

    app = App("usync-hooks", broker=f"kafka://{UNREACHABLE}", store="memory://", web_enabled=False,
              TableManager=PatientTableManager, Table=LinkTable)
    yield app
    app.consumer._thread.thread_loop.close()  # the consumer thread's own loop, never run


async def test_aiokafka_fetches_committed_offsets_with_their_metadata():
    """WindowConsumer._assigned reads the records done above each commit from its metadata."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.structs import OffsetAndMetadata

    assert inspect.iscoroutinefunction(GroupCoordinator.fetch_committed_offsets)
    assert parameters(GroupCoordinator.fetch_committed_offsets) == ["self", "partitions"]
    assert OffsetAndMetadata(5, "m").metadata == "m"
    consumer = AIOKafkaConsumer(bootstrap_servers=UNREACHABLE, group_id="g")
    assert hasattr(consumer, "_coordinator")  # set on start; None until then


# -- faust ----------------------------------------------------------------------------------


def test_faust_current_event_is_a_context_var_read_by_current_event():
    """streams.adapters.faust.tables.link_partition sets it to a weakref of one event of the group."""
    assert isinstance(faust.streams._current_event, ContextVar)
    event = StandIn()
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        assert faust.streams.current_event() is event
    finally:
        faust.streams._current_event.reset(token)


async def test_faust_creates_the_worker_consumer_through_the_hook_and_it_takes_our_fetch_wait(app):
    assert parameters(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer) == ["self", "transport"]
    thread = app.consumer._thread
    assert isinstance(thread, ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert isinstance(consumer, AIOKafkaConsumer)
        assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    finally:
        await consumer.stop()
    # aiokafka builds its fetcher from the attribute when it starts (no option reaches it otherwise)
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


def test_faust_recovery_has_the_steps_patient_recovery_overrides_with_their_signatures():
    assert parameters(Recovery._wait) == ["self", "coro", "timeout"]
    for step in ("_build_highwaters", "_build_offsets"):
        assert parameters(getattr(Recovery, step)) == ["self", "consumer", "tps", "destination", "title"], step
        assert inspect.iscoroutinefunction(getattr(Recovery, step)), step
    assert inspect.iscoroutinefunction(Recovery._wait)


async def test_faust_rebuilds_our_index_after_a_table_recovery_from_the_memory_stores_own_dict(app):
    """streams.adapters.faust.tables.define_tables: faust calls a table's on_recover callbacks
    after its store's on_recovery_completed; the memory store is a dict whose key objects
    its items() gives back (the index shares them: streams.adapters.faust.index)."""
    from faust.stores.memory import Store as MemoryStore

    from streams.adapters.faust.tables import ROW, define_tables
    from streams.core import Row

    rows, index, _pending, _marks = define_tables(app, 1)
    assert isinstance(rows.data, MemoryStore) and isinstance(rows.data.data, dict)
    key = b"b-to-a:alice"
    rows.data.data[key] = ROW.encode(Row(link="b-to-a", user_username="alice", b_offering_user_uuid="1" * 32))
    await rows.on_recovery_completed(set(), set())
    assert dict(index) == {f"b-to-a:source:{'1' * 32}": "alice"}
    assert next(index.slots.items())[3] is next(iter(rows.data.data)) is key


async def test_faust_memory_store_recovers_through_the_batch_iterator_link_memory_store_overrides(app):
    """streams.adapters.faust.store: one partition per link, and the keys of a partition no
    longer ours dropped after a recovery, as faust drops them per key."""
    from faust.stores.memory import Store as MemoryStore

    from streams.adapters.faust.store import LinkMemoryStore
    from streams.adapters.faust.tables import define_tables

    assert parameters(MemoryStore._create_batch_iterator) == ["self", "mark_as_delete", "to_key", "to_value", "batch"]
    rows, _index, _pending, _marks = define_tables(app, 2)
    store = rows.data
    assert isinstance(store, LinkMemoryStore)

    def event(key: bytes, value: bytes | None, partition: int) -> SimpleNamespace:
        return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=partition))

    batch = [event(b"l0:alice", b"1", 0), event(b"l0:bob", b"2", 0), event(b"l1:carol", b"3", 1),
             event(b"l0:bob", None, 0)]
    store.apply_changelog_batch(batch, to_key=lambda k: k, to_value=lambda v: v)
    assert dict(store.data) == {b"l0:alice": b"1", b"l1:carol": b"3"} and store._key_partition == {}
    await store.on_recovery_completed({TP("rows-changelog", 0)}, {TP("rows-changelog", 1)})
    assert dict(store.data) == {b"l0:alice": b"1"} and store.link_partition == {b"l0": 0}


async def test_faust_table_manager_builds_its_recovery_lazily_in_recovery(app):
    assert isinstance(inspect.getattr_static(TableManager, "recovery"), property)
    tables = app.tables
    assert isinstance(tables, PatientTableManager)
    assert tables._recovery is None
    recovery = tables.recovery
    assert isinstance(recovery, PatientRecovery) and tables._recovery is recovery and tables.recovery is recovery


async def test_faust_recovery_sets_completed_once_an_assignment_is_restored_and_never_clears_it(app):
    """streams.adapters.faust.app.tables_state reads it: ``assigning`` until the first
    assignment (an empty one too) is restored, instead of ``ready`` from the first second."""
    from streams.adapters.faust.app import tables_state

    recovery = app.tables.recovery
    assert not recovery.completed.is_set() and not app.in_recovery
    assert tables_state(app) == "assigning"
    for step in (Recovery._resume_streams, Recovery.on_recovery_completed):  # both ends of a recovery
        assert "self.completed.set()" in inspect.getsource(step)
    assert "completed.clear()" not in inspect.getsource(Recovery)
    recovery.completed.set()
    assert tables_state(app) == "ready"


async def test_faust_messages_carry_acked_and_the_consumer_never_acks_an_acked_one_again(app):
    """held_back_unless_done relies on it: a message marked acked stays out of the commits."""
    assert "acked" in Message.__slots__
    fresh, held = message(1), message(2)
    assert fresh.acked is False
    held.acked = True
    assert app.consumer.ack(held) is False
    app.consumer.ack(fresh)
    assert fresh.acked is True  # the consumer's ack is a test-and-set of the attribute


# -- aiokafka -------------------------------------------------------------------------------


async def test_aiokafka_producer_exposes_its_cluster_metadata_synchronously():
    producer = AIOKafkaProducer(bootstrap_servers=UNREACHABLE)
    try:
        assert producer.client.cluster.partitions_for_topic("never-seen") is None
    finally:
        await producer.stop()


async def test_aiokafka_consumer_client_fetches_all_metadata():
    consumer = AIOKafkaConsumer(bootstrap_servers=UNREACHABLE)
    try:
        assert inspect.iscoroutinefunction(consumer._client.fetch_all_metadata)
        assert parameters(consumer._client.fetch_all_metadata) == []
    finally:
        await consumer.stop()
    assert callable(ClusterMetadata.partitions_for_topic)  # what partitions_of reads from its answer


def _partition_records(value_deserializer) -> list:
    """The records aiokafka's fetcher hands out for one batch of three, as getmany returns them."""
    from aiokafka import TopicPartition
    from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for offset in range(3):
        builder.append(offset, timestamp=None, key=b"k", value=f"v{offset}".encode(), headers=[])
    records = PartitionRecords(TopicPartition("t", 0), MemoryRecords(bytes(builder.build())), [], 1, None,
                               value_deserializer, True, READ_UNCOMMITTED)
    return list(records)


def test_aiokafka_builds_each_consumer_record_in_the_method_readers_wraps():
    """streams.adapters.kafka.readers: a reader with ``records_as_read`` gets aiokafka's own
    records (offset and value as a ConsumerRecord's), every other consumer ConsumerRecords."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.structs import ConsumerRecord

    from streams.adapters.kafka.readers import _consumer_record, _records_as_read, as_read

    assert PartitionRecords._consumer_record is _records_as_read
    assert parameters(_consumer_record) == ["self", "tp", "record"]
    lean, built = _partition_records(as_read), _partition_records(None)
    assert [(r.offset, r.value) for r in lean] == [(r.offset, r.value) for r in built] == [(1, b"v1"), (2, b"v2")]
    assert not any(isinstance(r, ConsumerRecord) for r in lean)
    assert all(isinstance(r, ConsumerRecord) and r.topic == "t" for r in built)


# -- pika -----------------------------------------------------------------------------------


def test_pika_asyncio_connection_can_be_aborted_under_amqp():
    """bridges/transports/amqp.py (AmqpConnection._abort) calls ``conn._adapter_disconnect_stream()``."""
    assert callable(getattr(AsyncioConnection, "_adapter_disconnect_stream", None)), (
        "pika.adapters.asyncio_connection.AsyncioConnection has no _adapter_disconnect_stream "
        f"(has: {sorted(n for n in dir(AsyncioConnection) if n.startswith('_adapter_'))})"
    )


# -- held_back_unless_done ------------------------------------------------------------------


def batch(n: int = 3) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=SimpleNamespace(acked=False)) for _ in range(n)]


@pytest.mark.parametrize("failure", [RuntimeError("fold failed"), asyncio.CancelledError()])
def test_a_batch_whose_body_raises_is_marked_acked_and_the_failure_goes_on(failure):
    events = batch()
    with pytest.raises(type(failure)):
        with held_back_unless_done(events):
            raise failure
    assert [event.message.acked for event in events] == [True, True, True]


def test_a_batch_whose_body_finishes_is_left_alone():
    events = batch()
    with held_back_unless_done(events):
        pass
    assert [event.message.acked for event in events] == [False, False, False]


def test_aiokafka_create_conn_takes_what_the_refusal_probe_passes():
    """``streams.adapters.kafka.client.probe`` opens one connection with aiokafka's public
    ``create_conn`` to learn why bootstrap failed (its ``Unable to bootstrap`` drops the SASL error)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed
    assert {"client_id", "request_timeout_ms", "ssl_context", "security_protocol", "sasl_mechanism",
            "sasl_plain_username", "sasl_plain_password"} <= set(parameters(create_conn))
    assert str(SaslAuthenticationFailed("words")).endswith(": words")  # client._message strips the prefix

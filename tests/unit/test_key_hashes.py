"""The records producer's partitioner remembers key hashes and places every key as aiokafka's default does."""

from aiokafka.partitioner import DefaultPartitioner

from streams.adapters.kafka.producers import KeyHashes


def test_each_key_goes_where_the_default_partitioner_puts_it_also_after_forgetting():
    hashes, default = KeyHashes(), DefaultPartitioner()
    hashes.KEYS = 50  # forgets (all at once) several times below
    keys = [f"b:{i:032x}".encode() for i in range(120)] + [b"", "ünï:x".encode()]
    for count in (1, 3, 4, 32):
        partitions = list(range(count))
        for key in keys * 2:
            assert hashes(key, partitions, partitions) == default(key, partitions, partitions)
    assert len(hashes._hashes) <= 50

"""faust's memory store, remembering the partition of each link instead of each key.

faust's memory store records the partition of every key it recovers from a changelog,
so that after a rebalance it can drop the keys of partitions this worker no longer
owns: a second dict entry per row, ~45 B (``bench/bench_memory.py``). Every key of our
tables starts with its link's name and a colon, and a link's rows all live in one
partition (the by-link topic is keyed by link: ``streams.adapters.faust.tables``), so one
entry per link says the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from faust.stores.memory import Store
from faust.types import TP, EventT


SCAN_CHUNK = 20_000  # keys looked at between two yields to the loop (~3 ms)


def link_of(key: bytes) -> bytes:
    return key.partition(b":")[0]


class LinkMemoryStore(Store):
    """``memory://`` for :class:`streams.adapters.faust.tables.LinkTable`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.link_partition: dict[bytes, int] = {}  # what faust keeps in _key_partition, per link

    def _create_batch_iterator(self, mark_as_delete: Callable[[Any], None], to_key: Callable[[Any], Any],
                               to_value: Callable[[Any], Any], batch: Iterable[EventT]) -> Iterator[tuple[Any, Any]]:
        link_partition = self.link_partition
        for event in batch:
            key = to_key(event.key)
            if event.message.value is None:  # a tombstone: faust deletes the key after the batch
                mark_as_delete(key)
            link_partition[link_of(key)] = event.message.partition
            yield key, to_value(event.value)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Drop the links of partitions this worker no longer owns (faust: the keys)."""
        active = {partition for _, partition in active_tps}
        gone = {link for link, partition in self.link_partition.items() if partition not in active}
        if not gone:
            return
        keys = list(self.data)  # the standby reader may write while this yields
        for start in range(0, len(keys), SCAN_CHUNK):  # in slices: a million keys took ~0.3 s at once
            for key in keys[start:start + SCAN_CHUNK]:
                if link_of(key) in gone:
                    self.data.pop(key, None)
            await asyncio.sleep(0)
        for link in gone:
            del self.link_partition[link]

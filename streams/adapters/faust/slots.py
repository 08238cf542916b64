"""A hash table from (uuid, tag) to an object, in flat arrays: no object per entry.

A ``dict`` keyed by the uuid as an int costs, per entry, the int (48 B: Python rounds its
44 B up) and a slot (24 B, plus 4 B of index, over a fill between 1/3 and 2/3): 84 to
120 B; two entries per row made the identity index ~240 B of a row's ~680
(``bench/bench_memory.py``). Here a slot is 28 B (two 64-bit halves of the uuid, a 32-bit
tag, and an 8 B pointer to a value held elsewhere anyway, the row's key), at a fill kept
between 0.5 and 0.75 (linear probing, growth by 1.5): 37 to 56 B an entry. At 0.85 an
insert probed ~22 slots (2.1 µs in Python) and a rebuild of 300k rows took 8-10 µs a row.
Keys are exact: the whole uuid and the tag are compared, so nothing can be confused for
another.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

_EMPTY = 0  # a tag of 0 marks a slot never used; tags start at 1
_DELETED: Any = object()  # a value of _DELETED keeps the probe chain over a removed entry
_MAX_FILL = 0.75
_RESERVED_FILL = 0.6  # what reserve() leaves room for: new users then rarely grow it at once
_GROWTH = 1.5
_MASK64 = (1 << 64) - 1
_SPREAD = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads small tags over the table


class Slots:
    """(hi, lo, tag) -> value, with ``hi``/``lo`` the halves of a 128-bit uuid and ``tag`` ≥ 1."""

    def __init__(self, capacity: int = 64) -> None:
        self._allocate(capacity)
        self._live = 0

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        self._hi = array("Q", bytes(8 * capacity))
        self._lo = array("Q", bytes(8 * capacity))
        self._tag = array("I", bytes(4 * capacity))
        self._value: list[Any] = [None] * capacity
        self._used = 0  # live entries and deleted marks: what the probe chains cross

    def __len__(self) -> int:
        return self._live

    def reserve(self, entries: int) -> None:
        """Room for ``entries`` without growing on the way (a rebuild knows how many)."""
        needed = int(entries / _RESERVED_FILL) + 1
        if needed > self._capacity:
            self._resize(needed)

    def _find(self, hi: int, lo: int, tag: int) -> tuple[int, int]:
        """(the slot holding the key or -1, the first slot it could go in)."""
        capacity, tags, los, his, values = self._capacity, self._tag, self._lo, self._hi, self._value
        i = ((lo ^ tag * _SPREAD) & _MASK64) % capacity
        free = -1
        while True:
            t = tags[i]
            if t == _EMPTY:
                return -1, (i if free < 0 else free)
            if values[i] is _DELETED:
                if free < 0:
                    free = i
            elif t == tag and los[i] == lo and his[i] == hi:
                return i, i
            i += 1
            if i == capacity:
                i = 0

    def get(self, hi: int, lo: int, tag: int) -> Any:
        found, _ = self._find(hi, lo, tag)
        return None if found < 0 else self._value[found]

    def put(self, hi: int, lo: int, tag: int, value: Any) -> None:
        found, free = self._find(hi, lo, tag)
        if found >= 0:
            self._value[found] = value
            return
        if self._tag[free] == _EMPTY:
            self._used += 1
        self._hi[free], self._lo[free], self._tag[free], self._value[free] = hi, lo, tag, value
        self._live += 1
        if self._used > _MAX_FILL * self._capacity:
            self._resize(max(64, int(self._live * _GROWTH / _MAX_FILL) + 1))  # then half full

    def pop(self, hi: int, lo: int, tag: int) -> Any:
        found, _ = self._find(hi, lo, tag)
        if found < 0:
            return None
        value, self._value[found] = self._value[found], _DELETED
        self._live -= 1
        return value

    def items(self) -> Iterator[tuple[int, int, int, Any]]:
        for i in range(self._capacity):
            value = self._value[i]
            if self._tag[i] != _EMPTY and value is not _DELETED:
                yield self._hi[i], self._lo[i], self._tag[i], value

    def _resize(self, capacity: int) -> None:
        his, los, tags, values, old = self._hi, self._lo, self._tag, self._value, self._capacity
        self._allocate(capacity)
        self._live = 0
        for i in range(old):  # straight from the old arrays: no list of every entry on the way
            if tags[i] != _EMPTY and values[i] is not _DELETED:
                self.put(his[i], los[i], tags[i], values[i])


class PartitionSlots:
    """:class:`Slots` per partition, behind the same (hi, lo, tag) interface: a tag (a link
    and side) belongs to the partition of its link (:meth:`assign`), so the entries of a
    partition that moved away are dropped as one object (:meth:`drop`), whatever the number
    of rows, and those of a partition gained are added without touching the others."""

    def __init__(self) -> None:
        self.parts: dict[int, Slots] = {}
        self._part_of: list[int] = [0]  # tag -> its partition (tag 0 is never stored)

    def assign(self, tag: int, partition: int) -> None:
        """Tags are numbered from 1 in order; each is assigned once, when it is made."""
        assert tag == len(self._part_of), (tag, len(self._part_of))
        self._part_of.append(partition)

    def partition_of(self, tag: int) -> int:
        return self._part_of[tag]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts.values())

    def reserve(self, partition: int, entries: int) -> None:
        self._part(partition).reserve(entries)

    def _part(self, partition: int) -> Slots:
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = Slots()
        return part

    def get(self, hi: int, lo: int, tag: int) -> Any:
        part = self.parts.get(self._part_of[tag])
        return None if part is None else part.get(hi, lo, tag)

    def put(self, hi: int, lo: int, tag: int, value: Any) -> None:
        self._part(self._part_of[tag]).put(hi, lo, tag, value)

    def pop(self, hi: int, lo: int, tag: int) -> Any:
        part = self.parts.get(self._part_of[tag])
        return None if part is None else part.pop(hi, lo, tag)

    def drop(self, partition: int) -> int:
        """Forget every entry of ``partition``; answer how many there were."""
        part = self.parts.pop(partition, None)
        return 0 if part is None else len(part)

    def items(self) -> Iterator[tuple[int, int, int, Any]]:
        for part in list(self.parts.values()):
            yield from part.items()

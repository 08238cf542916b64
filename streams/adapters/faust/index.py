"""The worker's identity index: derived from the rows it holds, in memory, never stored.

The fold keeps the index as exactly what its rows imply (``streams.core.table.derived_index``),
so a worker does not write it to a table and a changelog: it rebuilds it from the rows
store after every table recovery (:meth:`RowIndex.rebuild`) and keeps it up to date as
the fold writes. Stored, the index was two dict entries per row with a bytes key of ~60 B
and a bytes value each, ~410 B per row of the memory store's ~860 (``bench/bench_memory.py``);
here an entry is a slot of flat arrays (``streams.adapters.faust.slots``) whose value is
the row's own key object, shared with the rows store.

Keys and values are the fold's (``<link>:<side>:<uuid>`` -> user). A uuid that is not 32
lowercase hex characters (never seen from Waldur: ``normalize_uuid``) is kept under its
string key, so the mapping is exact whatever the input.

The entries are kept per partition of their link (``PartitionSlots``): after a rebalance
the index drops the partitions that left and indexes the rows of those that came
(``streams.adapters.faust.tables.update_index``), instead of indexing every row again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from streams.adapters.faust.rowcodec import packed_uuids
from streams.adapters.faust.slots import PartitionSlots
from streams.core import Row, row_index_keys

_GONE: Any = object()


class RowIndex(MutableMapping[str, str]):
    """``<link>:<side>:<uuid>`` -> user: the row's key (bytes) in :class:`Slots` under the
    uuid and a number for ``<link>:<side>``, or in ``other`` under a key that is no uuid.

    The fold's writes of one batch group sit in ``dirty`` until :meth:`take_changes`
    merges them, as :class:`streams.adapters.faust.tables.BufferedMapping` does for rows.
    """

    def __init__(self, decode: Callable[[bytes, bytes], Row], partition_of: Callable[[str], int] | None = None) -> None:
        self.decode = decode  # (row key, stored value) -> Row
        self.partition_of = partition_of or (lambda _link: 0)  # a link's partition (its rows all live there)
        #: The partitions the fold keeps the index current for (active at the last recovery);
        #: None before the first (``streams.adapters.faust.tables.update_index``).
        self.current: set[int] | None = None
        self.reset()

    def reset(self) -> None:
        self.slots = PartitionSlots()
        self.other: dict[str, bytes] = {}
        self.dirty: dict[str, Any] = {}
        self._tags: dict[str, int] = {}  # "<link>:<side>" -> its tag
        self._names: list[str] = [""]
        self._by_link: dict[bytes, tuple[int, int]] = {}  # link -> (its source tag, its target tag)

    # -- keys ------------------------------------------------------------------------

    def _split(self, key: str, create: bool = False) -> tuple[int, int, int] | None:
        """(hi, lo, tag) of a key whose uuid is 32 lowercase hex characters, else None."""
        prefix, _, uuid = key.rpartition(":")
        if len(uuid) != 32:
            return None
        try:
            hi, lo = int(uuid[:16], 16), int(uuid[16:], 16)
        except ValueError:
            return None
        if f"{hi:016x}{lo:016x}" != uuid:  # int() also takes "0x", "_", signs and spaces
            return None
        tag = self._tag(prefix, create)
        return hi, lo, tag  # tag 0: nothing was ever stored under this link and side

    def _tag(self, prefix: str, create: bool) -> int:
        tag = self._tags.get(prefix)
        if tag is None:
            if not create:
                return 0
            tag = self._tags[prefix] = len(self._names)
            self._names.append(prefix)
            self.slots.assign(tag, self.partition_of(prefix.rpartition(":")[0]))
        return tag

    def _link_tags(self, row_key: bytes) -> tuple[int, int]:
        """The tags of a row's link, source side and target side."""
        link = row_key[:row_key.index(b":")]
        tags = self._by_link.get(link)
        if tags is None:
            name = link.decode()
            tags = self._by_link[link] = (self._tag(f"{name}:source", True), self._tag(f"{name}:target", True))
        return tags

    def _stored(self, key: str) -> bytes | None:
        split = self._split(key)
        if split is None:
            return self.other.get(key)
        return self.slots.get(*split) if split[2] else None

    def _store(self, key: str, row_key: bytes) -> None:
        split = self._split(key, create=True)
        if split is None:
            self.other[key] = row_key
        else:
            self.slots.put(*split, row_key)

    def _drop(self, key: str) -> None:
        split = self._split(key)
        if split is None:
            self.other.pop(key, None)
        elif split[2]:
            self.slots.pop(*split)

    # -- the mapping -----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:  # hot path: the fold's every event
        value = self.dirty.get(key, None)
        if value is not None:
            return default if value is _GONE else value
        row_key = self._stored(key)
        if row_key is None:
            return default
        return row_key[row_key.index(b":") + 1:].decode()  # link names hold no colon

    def __getitem__(self, key: str) -> str:
        value = self.get(key, _GONE)
        if value is _GONE:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, user: str) -> None:
        self.dirty[key] = user

    def __delitem__(self, key: str) -> None:
        if self.get(key, _GONE) is _GONE:
            raise KeyError(key)
        self.dirty[key] = _GONE

    def _keys(self) -> Iterator[str]:
        names = self._names
        for hi, lo, tag, _ in self.slots.items():
            yield f"{names[tag]}:{hi:016x}{lo:016x}"
        yield from list(self.other)

    def __iter__(self) -> Iterator[str]:
        dirty = self.dirty
        for key, value in dirty.items():
            if value is not _GONE:
                yield key
        for key in list(self._keys()):
            if key not in dirty:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- the worker's side -----------------------------------------------------------

    def take_changes(self) -> list[bytes]:
        """Merge the fold's writes; answer the row keys they point to (for :meth:`share`)."""
        written: dict[bytes, None] = {}
        for key, user in self.dirty.items():
            if user is _GONE:
                self._drop(key)
                continue
            row_key = f"{key[:key.index(':')]}:{user}".encode()
            self._store(key, row_key)
            written[row_key] = None
        self.dirty.clear()
        return list(written)

    def share(self, row_keys: Iterable[bytes], store: MutableMapping[bytes, bytes] | None) -> None:
        """Make each row's entries and its key in the memory store one object.

        A dict keeps the key object of its first insertion, so the rows store still holds
        an older copy of a row key whose index entry is new: the row is re-inserted under
        the index's object, and the row's other side pointed at it too (~64 B a row).
        """
        if store is None:
            return
        for row_key in row_keys:
            value = store.pop(row_key, None)
            if value is None:
                continue
            store[row_key] = value
            self._point(row_key, value)

    def _point(self, row_key: bytes, value: bytes) -> None:
        both = packed_uuids(value)
        if both is None:  # an id that is no uuid, a side not known yet, or an older format
            for key in row_index_keys(self.decode(row_key, value)):
                self._store(key, row_key)
            return
        (b, a), (source, target), put = both, self._link_tags(row_key), self.slots.put
        put(int.from_bytes(b[:8], "big"), int.from_bytes(b[8:], "big"), source, row_key)
        put(int.from_bytes(a[:8], "big"), int.from_bytes(a[8:], "big"), target, row_key)

    def add(self, rows: Iterable[tuple[bytes, bytes]], expected: int = 0, partition: int | None = None) -> None:
        """Index stored rows: (key, value) pairs, the keys the rows store's own objects;
        ``expected``: how many rows of ``partition`` the index will hold (room made once,
        ~2 entries a row)."""
        if expected and partition is not None:
            self.slots.reserve(partition, 2 * expected)
        for row_key, value in rows:
            self._point(row_key, value)

    def partitions(self) -> set[int]:
        """The partitions the index holds entries of."""
        return set(self.slots.parts) | {self.partition_of(key[:key.index(":")]) for key in self.other}

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the entries of ``partitions`` (their rows left, or are to be indexed again);
        answer how many there were. Outside a fold batch only (nothing buffered)."""
        assert not self.dirty, "drop_partitions inside a fold batch"
        gone = set(partitions)
        dropped = sum(self.slots.drop(partition) for partition in gone)
        for key in [key for key in self.other if self.partition_of(key[:key.index(":")]) in gone]:
            del self.other[key]
            dropped += 1
        return dropped

    def unpoint(self, row_key: bytes, value: bytes) -> None:
        """Forget the entries a stored row implied, those that still point at it (a row that
        recovery changed is then indexed again with its new value: :meth:`add`)."""
        for key in row_index_keys(self.decode(row_key, value)):
            if self._stored(key) == row_key:
                self._drop(key)

"""The worker's identity index: derived from the rows it holds, in memory, never stored.

The fold keeps the index as exactly what its rows imply (``streams.core.table.derived_index``),
so a worker does not write it to a table and a changelog: it rebuilds it from the rows
store after every table recovery (:meth:`RowIndex.rebuild`) and keeps it up to date as
the fold writes. Stored, the index was two dict entries per row with a bytes key of ~60 B
and a bytes value each, ~410 B per row of the memory store's ~860 (``bench/bench_memory.py``);
here an entry is an int key (the offering user uuid and a small (link, side) number in one
148-bit int: 48 B) whose value is the row's own key object, shared with the rows store:
~200 B per row for both sides.

Keys and values are the fold's (``<link>:<side>:<uuid>`` -> user). A uuid that is not 32
lowercase hex characters (never seen from Waldur: ``normalize_uuid``) is kept under its
string key, so the mapping is exact whatever the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from streams.core import Row, row_index_keys

_UUID_BITS = 128
_UUID_MASK = (1 << _UUID_BITS) - 1
_GONE: Any = object()

Packed = int | str


class RowIndex(MutableMapping[str, str]):
    """``<link>:<side>:<uuid>`` -> user over ``entries`` (packed key -> the row's key bytes).

    The fold's writes of one batch group sit in ``dirty`` until :meth:`take_changes`
    merges them, as :class:`streams.adapters.faust.tables.BufferedMapping` does for rows.
    """

    def __init__(self, decode: Callable[[bytes, bytes], Row]) -> None:
        self.decode = decode  # (row key, stored value) -> Row
        self.entries: dict[Packed, bytes] = {}
        self.dirty: dict[str, Any] = {}
        self._ids: dict[str, int] = {}  # "<link>:<side>" -> its number in the packed key
        self._names: list[str] = [""]

    # -- keys ------------------------------------------------------------------------

    def _pack(self, key: str, create: bool = False) -> Packed | None:
        prefix, _, uuid = key.rpartition(":")
        ident = self._ids.get(prefix)
        if ident is None:
            if not create:  # nothing was ever stored under this link and side
                return None
            ident = self._ids[prefix] = len(self._names)
            self._names.append(prefix)
        try:
            number = int(uuid, 16)
        except ValueError:
            return key
        if len(uuid) != 32 or f"{number:032x}" != uuid:  # int() also takes "0x..", "_", signs, spaces
            return key
        return number | ident << _UUID_BITS

    def _unpack(self, packed: Packed) -> str:
        if isinstance(packed, str):
            return packed
        return f"{self._names[packed >> _UUID_BITS]}:{packed & _UUID_MASK:032x}"

    # -- the mapping -----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:  # hot path: the fold's every event
        value = self.dirty.get(key, None)
        if value is not None:
            return default if value is _GONE else value
        packed = self._pack(key)
        row_key = None if packed is None else self.entries.get(packed)
        if row_key is None:
            return default
        return row_key[key.index(":") + 1:].decode()

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

    def __iter__(self) -> Iterator[str]:
        dirty = self.dirty
        for key, value in dirty.items():
            if value is not _GONE:
                yield key
        for packed in list(self.entries):
            key = self._unpack(packed)
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
                packed = self._pack(key)
                if packed is not None:
                    self.entries.pop(packed, None)
                continue
            row_key = f"{key[:key.index(':')]}:{user}".encode()
            self.entries[self._pack(key, create=True)] = row_key  # type: ignore[index]
            written[row_key] = None
        self.dirty.clear()
        return list(written)

    def share(self, row_keys: Iterable[bytes], store: MutableMapping[bytes, bytes] | None) -> None:
        """Make each row's entries and its key in the memory store one object.

        A dict keeps the key object of its first insertion, so the rows store still holds
        an older copy of a row key whose index entry is new: the row is re-inserted under
        the index's object, and the row's other side pointed at it too (~56 B a row).
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
        for key in row_index_keys(self.decode(row_key, value)):
            self.entries[self._pack(key, create=True)] = row_key  # type: ignore[index]

    def reset(self) -> None:
        self.entries, self.dirty = {}, {}

    def add(self, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """Index stored rows: (key, value) pairs, the keys the rows store's own objects."""
        for row_key, value in rows:
            self._point(row_key, value)

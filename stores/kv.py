"""RocksDB (rocksdict) state for serving replicas and the interests worker's item lookup.

One `StateDB` per role directory (e.g. ``data/serving-0/state``), one column
family per kind of record:

=============  ===============================  ==========================================
column family  key                              value
=============  ===============================  ==========================================
items          item id (utf-8)                  JSON {encoder_version, ts, metadata}
item_vectors   item id (utf-8)                  raw little-endian float32 row
users          user id (utf-8)                  opaque state bytes (interests engine)
user_records   user id (utf-8)                  the latest ``user-interests`` record, raw bytes
offsets        "topic:partition" (utf-8)        next offset to consume, 8-byte big-endian
meta           b"dim", b"purge_due"             ascii
=============  ===============================  ==========================================

Vectors live apart from their metadata so that `ItemStore.vectors(ids)` is one
RocksDB multi-get and one ``np.frombuffer`` over the joined rows, with no
per-item decoding.

Every write method takes an optional `batch` (from `StateDB.batch()`), so a
consumer can write the items of one Kafka poll and the offsets that follow them
in one atomic RocksDB write. The database is tuned for point reads: bloom
filters and a shared LRU block cache.

`StateDB.purge` leaves no byte of deleted or superseded records in the files (see
`stores.forgetting`); ``mark_purge_due`` / ``purge_due`` remember across restarts that one is
owed.
"""

from __future__ import annotations

import heapq
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
import rocksdict

from stores.forgetting import forgetful, purge

_ITEMS = "items"
_VECTORS = "item_vectors"
_USERS = "users"
_USER_RECORDS = "user_records"
_OFFSETS = "offsets"
_META = "meta"
_COLUMN_FAMILIES = (_ITEMS, _VECTORS, _USERS, _USER_RECORDS, _OFFSETS, _META)
_PURGE_DUE = b"purge_due"
_OFFSET = struct.Struct(">q")
_BLOCK_CACHE_MB = 64  # LRU block cache shared by all column families


class StoreLockedError(RuntimeError):
    """The RocksDB directory is held by another process (or already open in this one)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"state database {path} is locked: another process (or another StateDB in this "
            f"process) has it open. Stop it, or give this role its own directory. ({detail})"
        )
        self.path = path


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item as stored: its vector (float32) and where it came from."""

    item_id: str
    vector: np.ndarray
    encoder_version: str
    metadata: dict[str, Any]
    ts: int


class Batch:
    """Writes to any of one database's stores, applied atomically when the `with` block exits.

    Nothing is written if the block raises. Reads do not see a batch's writes
    until it is applied.
    """

    def __init__(self, db: StateDB) -> None:
        self._db = db
        self._wb = rocksdict.WriteBatch(raw_mode=True)

    def put(self, column_family: str, key: bytes, value: bytes) -> None:
        self._wb.put(key, value, self._db._handle(column_family))

    def delete(self, column_family: str, key: bytes) -> None:
        self._wb.delete(key, self._db._handle(column_family))

    def __len__(self) -> int:
        return int(self._wb.len())

    def apply(self) -> None:
        """Write everything gathered so far, atomically, and start empty again."""
        if not self._wb.is_empty():
            self._db._db.write(self._wb)
            self._wb = rocksdict.WriteBatch(raw_mode=True)

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.apply()


class StateDB:
    """One RocksDB for a role, exposing `items`, `users` and `offsets` stores.

    `path` is the database directory (created when missing). Raises `StoreLockedError` (naming
    the path) when another process holds it. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        cache = rocksdict.Cache(_BLOCK_CACHE_MB << 20)
        column_families = {name: _options(cache) for name in _COLUMN_FAMILIES}
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = rocksdict.Rdict(
                str(self.path),
                forgetful(_options(cache)),
                column_families=column_families,
                access_type=rocksdict.AccessType.read_write(),
            )
        except Exception as exc:  # rocksdict raises bare Exception with RocksDB's message
            if "lock" in str(exc).lower():
                raise StoreLockedError(self.path, str(exc)) from None
            raise
        self._cfs = {name: self._db.get_column_family(name) for name in _COLUMN_FAMILIES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in _COLUMN_FAMILIES}
        self._closed = False
        self.items = ItemStore(self)
        self.users = UserStore(self)
        self.offsets = OffsetStore(self)

    def batch(self) -> Batch:
        """A write batch spanning all stores.

        ``with db.batch() as b: db.items.put_many(..., batch=b); db.offsets.commit(..., batch=b)``
        """
        return Batch(self)

    def flush(self) -> None:
        """Flush memtables of every column family to disk."""
        for cf in self._cfs.values():
            cf.flush()

    @property
    def purge_due(self) -> bool:
        """Whether the last `purge` is older than the last `mark_purge_due` (it survives
        restarts: a purge noted before a crash or a stop is not forgotten)."""
        return self._cf(_META).get(_PURGE_DUE) is not None

    def mark_purge_due(self, due: bool = True) -> None:
        """Note (or clear) that deleted records wait for a purge."""
        meta = self._cf(_META)
        if due:
            meta[_PURGE_DUE] = b"1"
        elif meta.get(_PURGE_DUE) is not None:
            del meta[_PURGE_DUE]

    def purge(self, *, items: bool = False, users: bool = False) -> None:
        """Leave nothing on disk of the deleted or overwritten records of the item store
        (``items``) and of the user stores (``users``): flush everything, compact those column
        families whole, roll the MANIFEST (`stores.forgetting.purge`). Costs about one rewrite
        of them; blocks until done."""
        families = [
            self._cfs[name]
            for name, chosen in (
                (_ITEMS, items),
                (_VECTORS, items),
                (_USERS, users),
                (_USER_RECORDS, users),
            )
            if chosen
        ]
        if not families:
            return
        self.flush()  # every column family, so the write-ahead log holding the deletes goes
        purge(self._db, families)

    def close(self) -> None:
        """Flush and release the database and its lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        for cf in self._cfs.values():
            cf.close()
        self._cfs.clear()
        self._handles.clear()
        self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- used by the stores ----
    def _cf(self, name: str) -> rocksdict.Rdict:
        return self._cfs[name]

    def _handle(self, name: str) -> rocksdict.ColumnFamily:
        return self._handles[name]

    def _write(self, batch: Batch | None, puts: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Add (column family, key, value) puts to `batch`, or write them atomically now."""
        target = batch if batch is not None else Batch(self)
        for cf, key, value in puts:
            target.put(cf, key, value)
        if batch is None:
            target.apply()

    def _delete(self, batch: Batch | None, deletes: Iterable[tuple[str, bytes]]) -> None:
        target = batch if batch is not None else Batch(self)
        for cf, key in deletes:
            target.delete(cf, key)
        if batch is None:
            target.apply()


class ItemStore:
    """Item embeddings with their encoder version, metadata and timestamp."""

    def __init__(self, db: StateDB) -> None:
        self._db = db
        raw_dim = db._cf(_META).get(b"dim")
        self._dim: int | None = int(raw_dim) if raw_dim is not None else None
        self._dim_lock = threading.Lock()

    @property
    def dim(self) -> int | None:
        """Vector dimension, fixed by the first item written (None while empty)."""
        return self._dim

    def put(
        self,
        item_id: str,
        vector: np.ndarray,
        *,
        encoder_version: str,
        metadata: Mapping[str, Any] | None = None,
        ts: int,
        batch: Batch | None = None,
    ) -> None:
        """Store (or replace) one item."""
        self.put_many(
            [item_id],
            np.asarray(vector)[None, :],
            encoder_version=encoder_version,
            metadata=[metadata],
            ts=ts,
            batch=batch,
        )

    def put_many(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        encoder_version: str | Sequence[str],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ts: int | Sequence[int],
        batch: Batch | None = None,
    ) -> None:
        """Store (or replace) many items in one atomic write (or into `batch`).

        `encoder_version` and `ts` are one value for all or one per item;
        `metadata` is one JSON-able mapping (or None) per item.
        """
        matrix = np.asarray(vectors)
        n = len(ids)
        if matrix.ndim != 2 or matrix.shape[0] != n:
            raise ValueError(f"vectors must have shape ({n}, dim), got {matrix.shape}")
        self._check_dim(matrix.shape[1])
        versions = (
            [encoder_version] * n if isinstance(encoder_version, str) else list(encoder_version)
        )
        stamps = [int(ts)] * n if isinstance(ts, int | np.integer) else [int(t) for t in ts]
        metas = [None] * n if metadata is None else list(metadata)
        if not (len(versions) == len(stamps) == len(metas) == n):
            raise ValueError("encoder_version, ts and metadata must have one entry per item")
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        raw, width = rows.tobytes(), rows.shape[1] * rows.itemsize
        puts: list[tuple[str, bytes, bytes]] = []
        for i, item_id in enumerate(ids):
            key = item_id.encode()
            puts.append((_VECTORS, key, raw[i * width : (i + 1) * width]))
            record = {"encoder_version": versions[i], "ts": stamps[i], "metadata": metas[i] or {}}
            puts.append((_ITEMS, key, json.dumps(record, separators=(",", ":")).encode()))
        self._db._write(batch, puts)

    def get(self, item_id: str) -> StoredItem | None:
        key = item_id.encode()
        record, raw = self._db._cf(_ITEMS).get(key), self._db._cf(_VECTORS).get(key)
        if record is None or raw is None:
            return None
        return self._item(item_id, record, raw)

    def vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(ids found, float32 matrix of their vectors in that order); missing ids are dropped.

        One multi-get; ~500 ids take well under a millisecond with a warm cache.
        """
        raws = _multi_get(self._db._cf(_VECTORS), [i.encode() for i in ids])
        found = [(item_id, raw) for item_id, raw in zip(ids, raws, strict=True) if raw is not None]
        return [f[0] for f in found], self._rows(b"".join(f[1] for f in found))

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_id.encode() in self._db._cf(_VECTORS)

    def delete(self, ids: str | Iterable[str], *, batch: Batch | None = None) -> int:
        """Delete items; returns how many existed (before any pending `batch`)."""
        keys = [ids.encode()] if isinstance(ids, str) else [i.encode() for i in ids]
        existed = sum(raw is not None for raw in _multi_get(self._db._cf(_VECTORS), keys))
        self._db._delete(batch, [(cf, k) for k in keys for cf in (_VECTORS, _ITEMS)])
        return existed

    def __len__(self) -> int:
        """Items stored (counts keys: O(items), ~10 ms per 100k)."""
        return sum(1 for _ in self._db._cf(_VECTORS).keys())  # noqa: SIM118 (an Rdict, not a dict)

    def estimated_len(self) -> int:
        """Items stored, as RocksDB estimates it (O(1); exact until deletes and overwrites
        meet in a compaction): for gauges, which must not walk every key."""
        return int(self._db._cf(_VECTORS).property_int_value("rocksdb.estimate-num-keys") or 0)

    def iterate(self) -> Iterator[StoredItem]:
        """Every item, in key order."""
        vectors = self._db._cf(_VECTORS)
        for key, record in _raw_items(self._db._cf(_ITEMS)):
            raw = vectors.get(key)
            if raw is not None:
                yield self._item(key.decode(), record, raw)

    def iterate_vectors(self, chunk: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """All vectors in key order, `chunk` at a time, as (ids, float32 matrix): index rebuilds."""
        ids: list[str] = []
        raws: list[bytes] = []
        for key, raw in _raw_items(self._db._cf(_VECTORS)):
            ids.append(key.decode())
            raws.append(raw)
            if len(ids) == chunk:
                yield ids, self._rows(b"".join(raws))
                ids, raws = [], []
        if ids:
            yield ids, self._rows(b"".join(raws))

    def _item(self, item_id: str, record: bytes, raw: bytes) -> StoredItem:
        meta = json.loads(record)
        return StoredItem(
            item_id=item_id,
            vector=self._rows(raw)[0],
            encoder_version=meta["encoder_version"],
            metadata=meta["metadata"],
            ts=meta["ts"],
        )

    def _rows(self, raw: bytes) -> np.ndarray:
        dim = self._dim or 0
        if not raw:
            return np.empty((0, dim), dtype=np.float32)
        return np.frombuffer(raw, dtype=np.float32).reshape(-1, dim).copy()

    def _check_dim(self, dim: int) -> None:
        if self._dim == dim:
            return
        with self._dim_lock:
            if self._dim is None:
                self._db._cf(_META)[b"dim"] = str(dim).encode()
                self._dim = dim
        if self._dim != dim:
            raise ValueError(
                f"item store {self._db.path} holds {self._dim}-d vectors; got {dim}-d "
                "(a new encoder dimension needs a new store)"
            )


class UserStore:
    """Per-user interests: the engine's state (opaque bytes) and the latest ``user-interests``
    record (the topic value as it arrived, opaque bytes; parse it with the streams schemas)."""

    def __init__(self, db: StateDB) -> None:
        self._db = db

    def put(
        self,
        user_id: str,
        state: bytes | None,
        *,
        record: bytes | None = None,
        batch: Batch | None = None,
    ) -> None:
        """Replace what is stored for the user: `state` and `record` (None = not kept)."""
        if state is None and record is None:
            raise ValueError(f"user {user_id!r}: give a state, a record or both (or delete)")
        key = user_id.encode()
        puts = [(cf, key, bytes(v)) for cf, v in ((_USERS, state), (_USER_RECORDS, record)) if v]
        gone = [(cf, key) for cf, v in ((_USERS, state), (_USER_RECORDS, record)) if v is None]
        target = batch if batch is not None else Batch(self._db)
        self._db._delete(target, gone)
        self._db._write(target, puts)
        if batch is None:
            target.apply()

    def get(self, user_id: str) -> bytes | None:
        """The user's state bytes, or None."""
        value = self._db._cf(_USERS).get(user_id.encode())
        return None if value is None else bytes(value)

    def record(self, user_id: str) -> bytes | None:
        """The latest user-interests record stored for the user, or None."""
        value = self._db._cf(_USER_RECORDS).get(user_id.encode())
        return None if value is None else bytes(value)

    def delete(self, user_id: str, *, batch: Batch | None = None) -> bool:
        """Forget a user (state and record); returns whether they existed (before any
        pending `batch`)."""
        key = user_id.encode()
        existed = key in self._db._cf(_USERS) or key in self._db._cf(_USER_RECORDS)
        self._db._delete(batch, [(_USERS, key), (_USER_RECORDS, key)])
        return existed

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        key = user_id.encode()
        return key in self._db._cf(_USERS) or key in self._db._cf(_USER_RECORDS)

    def __len__(self) -> int:
        """Users with a state or a record (counts keys: O(users))."""
        return _count_union(self._db._cf(_USERS), self._db._cf(_USER_RECORDS))

    def iterate(self) -> Iterator[tuple[str, bytes]]:
        """Every (user id, state), in key order (users with only a record are skipped)."""
        for key, value in _raw_items(self._db._cf(_USERS)):
            yield key.decode(), value


class OffsetStore:
    """Kafka offsets a replica's state reflects: "topic:partition" -> next offset to consume."""

    def __init__(self, db: StateDB) -> None:
        self._db = db

    def commit(self, offsets: Mapping[str, int], *, batch: Batch | None = None) -> None:
        """Record offsets (merged with those already stored for other partitions)."""
        puts = []
        for tp, offset in offsets.items():
            if ":" not in tp or int(offset) < 0:
                raise ValueError(
                    f"offsets map 'topic:partition' to an offset >= 0; got {tp!r}: {offset!r}"
                )
            puts.append((_OFFSETS, tp.encode(), _OFFSET.pack(int(offset))))
        self._db._write(batch, puts)

    def load(self) -> dict[str, int]:
        return {k.decode(): _OFFSET.unpack(v)[0] for k, v in _raw_items(self._db._cf(_OFFSETS))}


class CachedItemVectors:
    """An LRU cache of item vectors in front of an `ItemStore` (for per-event lookups).

    Writes and deletes made to the store need `invalidate`. Thread-safe.
    """

    def __init__(self, store: ItemStore, capacity: int = 65_536) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.store = store
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """As `ItemStore.vectors`: (ids found, float32 matrix), missing ids dropped."""
        with self._lock:
            cached = {i: v for i in ids if (v := self._cache.get(i)) is not None}
            for i in cached:
                self._cache.move_to_end(i)
        missing = [i for i in dict.fromkeys(ids) if i not in cached]
        if missing:
            found_ids, matrix = self.store.vectors(missing)
            fetched = dict(zip(found_ids, matrix, strict=True))
            with self._lock:
                self._cache.update(fetched)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            cached.update(fetched)
        with self._lock:
            self.hits += len(ids) - len(missing)
            self.misses += len(missing)
        found = [i for i in ids if i in cached]
        dim = self.store.dim or 0
        matrix = np.stack([cached[i] for i in found]) if found else np.empty((0, dim), np.float32)
        return found, matrix

    def invalidate(self, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                self._cache.pop(i, None)


def _multi_get(cf: rocksdict.Rdict, keys: list[bytes]) -> list[bytes | None]:
    """One RocksDB multi-get (raw mode: values are bytes)."""
    return cast("list[bytes | None]", cf.get(cast("list[Any]", keys)))


def _count_union(a: rocksdict.Rdict, b: rocksdict.Rdict) -> int:
    """Distinct keys across two column families (both iterate in key order: a merge)."""
    count, previous = 0, None
    for key in heapq.merge(a.keys(), b.keys()):
        if key != previous:
            count, previous = count + 1, key
    return count


def _raw_items(cf: rocksdict.Rdict) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs in key order (raw mode: both bytes)."""
    return cast("Iterator[tuple[bytes, bytes]]", iter(cf.items()))


def _options(cache: rocksdict.Cache) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)  # point lookups of absent keys skip the SST read
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    return opts

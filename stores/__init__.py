"""recstream stores: the live item index (HNSW, with snapshots) and the RocksDB state.

Imports neither `streams`, `serving` nor `encoders`. Everything public is re-exported here;
details and defaults are in each class's docstring.

Item index (`stores.index`)
---------------------------
``ItemIndex(dim, *, M=16, ef_construction=200, ef=64, initial_capacity=1024, copies=2,
num_threads=1, write_budget_ms=5.0, random_seed=100)``: approximate cosine k-NN over
hnswlib (inner product on vectors it normalizes). ``ExactIndex(dim, *, initial_capacity=1024)``
has the same interface (numpy matmul; exact; the recall baseline and fine for small catalogs).

- ``upsert(ids, vectors)``: new ids are added, known ids get their new vector (a batch is one
  write; the last duplicate wins; a zero/NaN vector rejects the whole batch).
- ``delete(ids) -> int``: how many were present; a deleted id is never returned again.
- ``knn(query, k, *, ef=None, exclude=None, filter=None)``: ``list[Neighbor]`` best first
  for a 1-D query (``list[list[Neighbor]]`` for a 2-D one); ``knn_batch(queries, k, ...)``
  always the latter. ``Neighbor(item_id, score)`` with score = cosine similarity. Items in
  `exclude` or rejected by ``filter(item_id) -> bool`` are skipped and k hits still come
  back when k valid items exist. A per-call `ef` is a slow path (sweeps, tests).
  ``knn_pairs(queries, k, ...)`` is ``knn_batch`` with plain ``(item_id, score)`` tuples
  (no ``Neighbor`` built per hit: for hot paths).
- ``len(index)``, ``item_id in index``, ``ids()``, ``vector(item_id)``, ``version`` (bumped
  by every write: key caches with it), ``dim``; ItemIndex also ``ef`` (settable),
  ``num_threads`` (settable), ``capacity``, ``copies``, ``nbytes()``.
- ``snapshot(directory, offsets, *, keep=2) -> Path``: a new checksummed generation
  ``directory/snap-NNNNNNNNNN`` (temp dir + fsync + rename) holding the index, the
  id -> label map, ef and `offsets` ({"topic:partition": next offset}).
  ``ItemIndex.restore(directory, *, copies=None)`` / ``ExactIndex.restore(directory)`` ->
  ``(index, offsets)`` from the newest intact generation, or None (warning logged) when
  none is usable: then replay from the start.

Concurrency: any number of query threads and one writer at a time (writes are serialized
by the index). With ``copies=2`` queries never wait for writes (left-right: two graphs);
with ``copies=1`` they wait at most ~`write_budget_ms`. See `stores.index`.

State (`stores.kv`)
-------------------
``StateDB(path)``: one RocksDB per role directory (64 MB block cache); raises
`StoreLockedError` (with the path) when another process holds it. Use as a context manager.
Attributes and methods:

- ``db.items`` (`ItemStore`): ``put(item_id, vector, *, encoder_version, metadata=None, ts,
  batch=None)``, ``put_many(ids, vectors, *, encoder_version, metadata=None, ts,
  batch=None)``, ``get(item_id) -> StoredItem | None``, ``vectors(ids) -> (found_ids,
  float32 matrix)`` (one multi-get), ``delete(ids, *, batch=None) -> int``, ``iterate()``,
  ``iterate_vectors(chunk=4096)``, ``len()``, ``in``, ``dim``.
- ``db.users`` (`UserStore`): ``put(user_id, state, *, record=None, batch=None)`` (state:
  the interests engine's bytes; record: the latest ``user-interests`` value, raw bytes),
  ``get(user_id)``, ``record(user_id)``, ``delete(user_id, *, batch=None) -> bool``,
  ``iterate()``, ``len()``, ``in``.
- ``db.offsets`` (`OffsetStore`): ``commit({"topic:partition": next_offset}, *,
  batch=None)``, ``load() -> dict``.
- ``db.batch()`` -> `Batch`: ``with db.batch() as b:`` pass ``batch=b`` to any of the above
  and everything is written in one atomic RocksDB write at the end (nothing if it raises).
- ``db.flush()``, ``db.close()``.
- ``db.purge(*, items=False, users=False)``: nothing of the deleted or superseded records of
  the item store / the user stores is left in the files (flush, full compaction, MANIFEST
  rolled: `stores.forgetting`); ``mark_purge_due(due=True)`` and ``purge_due`` keep, across
  restarts, that a purge is owed.

Forgetting (`stores.forgetting`, `stores.hnsw_file`): ``purge(rdict, column_families=())``
and ``forgetful(options)`` for any RocksDB database (the interests worker's faust tables use
them too); an `ItemIndex` snapshot zeroes the vectors of deleted elements in hnswlib's file.

``CachedItemVectors(item_store, capacity=65_536)``: a thread-safe LRU of item vectors in
front of an `ItemStore` (``vectors(ids)``, ``invalidate(ids)`` after writing to the store,
``hits``, ``misses``).
"""

from stores.index import ExactIndex, ItemIndex, Neighbor, normalize_rows
from stores.kv import (
    Batch,
    CachedItemVectors,
    ItemStore,
    OffsetStore,
    StateDB,
    StoredItem,
    StoreLockedError,
    UserStore,
)
from stores.snapshot import SnapshotError

__all__ = [
    "Batch",
    "CachedItemVectors",
    "ExactIndex",
    "ItemIndex",
    "ItemStore",
    "Neighbor",
    "OffsetStore",
    "SnapshotError",
    "StateDB",
    "StoreLockedError",
    "StoredItem",
    "UserStore",
    "normalize_rows",
]

"""Nearest-neighbour indexes over item embeddings: HNSW (`ItemIndex`) and exact (`ExactIndex`).

Both take string item ids and raw vectors, normalize the vectors to unit length
and score by inner product, so a score is the cosine similarity (higher is
better). Both have the same interface, so the exact one serves as the recall
baseline in tests and benchmarks and as the index for small catalogs.

Concurrency
-----------
Readers (HTTP request threads) query while one writer (the Kafka consumer)
upserts, deletes and grows the index. hnswlib's search takes no locks, and its
maintainers say search and insert are not safe together (nmslib/hnswlib #562,
#590); `resize_index` reallocates the graph under the readers' feet. So:

* a writer-preferring reader/writer lock (`stores._rwlock.ReadWriteLock`)
  guards the hnswlib object and the id <-> label maps. Queries share it;
  hnswlib releases the GIL inside `knn_query`, so concurrent queries run in
  parallel on all cores.
* every mutation runs under a writer mutex (one writer at a time, also taken
  by `snapshot`) and takes the exclusive side only in short slices: an upsert
  is cut into chunks sized from the measured cost per item so that one slice
  lasts about `write_budget_ms` (5 ms by default); a resize is its own slice.
  A query therefore waits at most one slice, however large the write.
* `snapshot` holds only the writer mutex: it reads the index while queries go
  on, and writes wait until it is done.
* a query with an `ef` other than the index's own changes hnswlib's shared
  `ef`, so it runs exclusively (rare: sweeps and tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import hnswlib
import numpy as np

from stores._rwlock import ReadWriteLock
from stores.snapshot import SnapshotError, iter_snapshots, write_snapshot

log = logging.getLogger(__name__)

ItemFilter = Callable[[str], bool]

_SNAPSHOT_FORMAT = "recstream.item_index"
_SNAPSHOT_FORMAT_VERSION = 1
_INDEX_FILE = "index.hnsw"
_LABELS_FILE = "labels.json"
# Asking for more than this fraction of the live items: brute force beats the graph and is exact.
_SCAN_FRACTION = 0.25
_SCAN_CHUNK = 16_384
_QUERY_CHUNK = 256
_DELETE_CHUNK = 4_096


class Neighbor(NamedTuple):
    """One search hit: the item and its cosine similarity to the query."""

    item_id: str
    score: float


def normalize_rows(matrix: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
    """Unit-length float32 copy of `matrix` (2-D); zero or non-finite rows raise ValueError."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0.0))
    if bad.size:
        where = [ids[i] for i in bad[:5]] if ids is not None else bad[:5].tolist()
        raise ValueError(
            f"{bad.size} vector(s) are zero or not finite and cannot be normalized: {where}"
        )
    return np.ascontiguousarray(m / norms[:, None], dtype=np.float32)


class _VectorIndex(ABC):
    """Shared front end: input checks, normalization, locking, exclude/filter over-fetch."""

    def __init__(self, dim: int) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = int(dim)
        self._lock = ReadWriteLock()
        self._writer = threading.Lock()  # one mutation (or snapshot) at a time
        self._version = 0

    # ---- subclass hooks (called with the lock held as documented) ----
    @abstractmethod
    def _live_count(self) -> int: ...

    @abstractmethod
    def _has(self, item_id: str) -> bool: ...

    @abstractmethod
    def _live_ids(self) -> list[str]: ...

    @abstractmethod
    def _vector(self, item_id: str) -> np.ndarray | None: ...

    @abstractmethod
    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        """Called under the writer mutex; takes the exclusive lock itself, bumps `_version`."""

    @abstractmethod
    def _apply_delete(self, ids: list[str]) -> int:
        """Called under the writer mutex; takes the exclusive lock itself, bumps `_version`."""

    @abstractmethod
    def _search(self, queries: np.ndarray, fetch: int) -> list[list[Neighbor]]:
        """Best `fetch` live items per (unit) query row, best first; under the read lock."""

    def _query_section(self, ef: int | None) -> contextlib.AbstractContextManager[None]:
        return self._lock.read

    # ---- public API ----
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def version(self) -> int:
        """Monotonic counter, bumped by every write (cache key for query results)."""
        return self._version

    def __len__(self) -> int:
        with self._lock.read:
            return self._live_count()

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        with self._lock.read:
            return self._has(item_id)

    def ids(self) -> list[str]:
        """The live item ids (a copy, in no particular order)."""
        with self._lock.read:
            return self._live_ids()

    def vector(self, item_id: str) -> np.ndarray | None:
        """The item's stored (unit-normalized) vector, or None when unknown."""
        with self._lock.read:
            return self._vector(item_id)

    def upsert(self, ids: Sequence[str] | str, vectors: np.ndarray) -> None:
        """Add new ids and replace the vectors of known ones (a batch; the last duplicate wins).

        Vectors are normalized here; a zero or non-finite vector raises ValueError and
        nothing in the batch is written.
        """
        id_list, matrix = self._prepare_upsert(ids, vectors)
        if id_list:
            with self._writer:
                self._apply_upsert(id_list, matrix)

    def delete(self, ids: Iterable[str] | str) -> int:
        """Remove items; returns how many were present. A deleted id is never returned again
        (until it is upserted anew)."""
        id_list = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        if not id_list:
            return 0
        with self._writer:
            return self._apply_delete(id_list)

    def knn(
        self,
        query: np.ndarray | Sequence[float],
        k: int,
        *,
        ef: int | None = None,
        exclude: Collection[str] | None = None,
        filter: ItemFilter | None = None,
    ) -> list[Any]:
        """The `k` nearest live items to `query`.

        A 1-D query gives ``list[Neighbor]`` (best first); a 2-D matrix gives
        ``list[list[Neighbor]]``, as `knn_batch`. Items in `exclude` or rejected by
        `filter` are skipped, and k results still come back whenever k valid items
        exist (the search over-fetches and widens until it has them). `ef` overrides
        the search breadth for this call (HNSW only).
        """
        q = np.asarray(query, dtype=np.float32)
        if q.ndim == 1:
            return self.knn_batch(q[None, :], k, ef=ef, exclude=exclude, filter=filter)[0]
        return self.knn_batch(q, k, ef=ef, exclude=exclude, filter=filter)

    def knn_batch(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef: int | None = None,
        exclude: Collection[str] | None = None,
        filter: ItemFilter | None = None,
    ) -> list[list[Neighbor]]:
        """`knn` for each row of `queries` (n, dim); one result list per row."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"queries must have shape (n, {self._dim}), got {q.shape}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if ef is not None and ef <= 0:
            raise ValueError(f"ef must be positive, got {ef}")
        if k == 0 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        q = normalize_rows(q)
        excluded: Collection[str] = (
            exclude if isinstance(exclude, set | frozenset) else set(exclude or ())
        )
        with self._query_section(ef):
            return self._knn_locked(q, k, excluded, filter)

    # ---- internals ----
    def _knn_locked(
        self, q: np.ndarray, k: int, excluded: Collection[str], keep: ItemFilter | None
    ) -> list[list[Neighbor]]:
        live = self._live_count()
        if live == 0:
            return [[] for _ in range(q.shape[0])]
        if not excluded and keep is None:
            return self._search(q, min(k, live))
        # Over-fetch for what exclude/filter will drop, then widen 4x for rows still short.
        fetch = min(live, k + min(len(excluded), k) + (k if keep is not None else 0))
        results: list[list[Neighbor]] = [[] for _ in range(q.shape[0])]
        pending = np.arange(q.shape[0])
        while pending.size:
            short = []
            for row, hits in zip(pending.tolist(), self._search(q[pending], fetch), strict=True):
                valid = [
                    h
                    for h in hits
                    if h.item_id not in excluded and (keep is None or keep(h.item_id))
                ]
                if len(valid) >= k or fetch >= live:
                    results[row] = valid[:k]
                else:
                    short.append(row)
            pending = np.asarray(short, dtype=np.intp)
            fetch = min(live, fetch * 4)
        return results

    def _prepare_upsert(
        self, ids: Sequence[str] | str, vectors: np.ndarray
    ) -> tuple[list[str], np.ndarray]:
        id_list = [ids] if isinstance(ids, str) else list(ids)
        m = np.asarray(vectors, dtype=np.float32)
        if m.ndim == 1:
            m = m[None, :]
        if m.shape != (len(id_list), self._dim):
            raise ValueError(
                f"expected vectors of shape ({len(id_list)}, {self._dim}) for {len(id_list)} "
                f"id(s), got {np.shape(vectors)}"
            )
        if not all(isinstance(i, str) and i for i in id_list):
            raise TypeError("item ids must be non-empty strings")
        m = normalize_rows(m, id_list)
        last_row = {item_id: row for row, item_id in enumerate(id_list)}
        if len(last_row) != len(id_list):  # duplicates: keep the last occurrence of each id
            rows = np.fromiter(last_row.values(), dtype=np.intp, count=len(last_row))
            id_list, m = list(last_row), m[rows]
        return id_list, m


class ItemIndex(_VectorIndex):
    """Approximate cosine k-NN over a live catalog (hnswlib HNSW, inner product on unit vectors).

    Parameters (defaults as hnswlib's):
        dim: vector dimension.
        M: graph degree (16); more = better recall, more memory, slower inserts.
        ef_construction: build-time breadth (200).
        ef: query-time breadth (64); settable via `index.ef`, not saved by hnswlib
            (snapshots keep it).
        initial_capacity: slots allocated up front (1024); doubles automatically.
        num_threads: threads hnswlib uses inside one add/query call (1; -1 = all cores).
            Concurrent callers already run in parallel, so 1 suits serving.
        write_budget_ms: target length of one exclusive write slice (5.0), i.e. the most a
            query waits for a writer; None writes each batch in one slice (bulk loads).
        random_seed: hnswlib level-generator seed (100).

    String ids map to hnswlib integer labels through a map saved with snapshots.
    Labels are never reused; deleted slots are (``allow_replace_deleted``).
    See the module docstring for the concurrency scheme.
    """

    def __init__(
        self,
        dim: int,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        initial_capacity: int = 1024,
        num_threads: int = 1,
        write_budget_ms: float | None = 5.0,
        random_seed: int = 100,
    ) -> None:
        super().__init__(dim)
        if M < 2 or ef_construction < 1 or ef < 1 or initial_capacity < 1:
            raise ValueError(
                "need M >= 2, ef_construction >= 1, ef >= 1, initial_capacity >= 1; got "
                f"M={M}, ef_construction={ef_construction}, ef={ef}, "
                f"initial_capacity={initial_capacity}"
            )
        self._hnsw = hnswlib.Index(space="ip", dim=self._dim)
        self._hnsw.init_index(
            max_elements=int(initial_capacity),
            M=int(M),
            ef_construction=int(ef_construction),
            random_seed=int(random_seed),
            allow_replace_deleted=True,
        )
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._configure(ef, num_threads, write_budget_ms)

    def _configure(self, ef: int, num_threads: int, write_budget_ms: float | None) -> None:
        self._ef = int(ef)
        self._hnsw.set_ef(self._ef)
        self._num_threads = int(num_threads)
        self._hnsw.set_num_threads(self._num_threads)
        self.write_budget_ms = write_budget_ms
        self._seconds_per_item = 1e-3  # first guess; refined from every slice

    # ---- configuration ----
    @property
    def ef(self) -> int:
        """Query-time breadth (hnswlib `ef`); higher = better recall, slower queries."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"ef must be positive, got {value}")
        with self._lock.write:
            self._hnsw.set_ef(int(value))
            self._ef = int(value)
            self._version += 1

    @property
    def M(self) -> int:
        return int(self._hnsw.M)

    @property
    def ef_construction(self) -> int:
        return int(self._hnsw.ef_construction)

    @property
    def capacity(self) -> int:
        """Allocated slots (live + deleted-but-unreused + free)."""
        return int(self._hnsw.max_elements)

    def nbytes(self) -> int:
        """Size of the serialized index (hnswlib `index_file_size`)."""
        with self._lock.read:
            return int(self._hnsw.index_file_size())

    # ---- hooks ----
    def _live_count(self) -> int:
        return len(self._label_of)

    def _has(self, item_id: str) -> bool:
        return item_id in self._label_of

    def _live_ids(self) -> list[str]:
        return list(self._label_of)

    def _vector(self, item_id: str) -> np.ndarray | None:
        label = self._label_of.get(item_id)
        if label is None:
            return None
        return np.asarray(self._hnsw.get_items([label]), dtype=np.float32)[0]

    def _query_section(self, ef: int | None) -> contextlib.AbstractContextManager[None]:
        if ef is None or ef == self._ef:
            return self._lock.read
        return self._exclusive_with_ef(ef)

    @contextlib.contextmanager
    def _exclusive_with_ef(self, ef: int) -> Iterator[None]:
        with self._lock.write:
            self._hnsw.set_ef(int(ef))
            try:
                yield
            finally:
                self._hnsw.set_ef(self._ef)

    def _search(self, queries: np.ndarray, fetch: int) -> list[list[Neighbor]]:
        if fetch >= _SCAN_FRACTION * len(self._label_of):
            return self._scan(queries, fetch)
        try:
            labels, dists = self._hnsw.knn_query(queries, k=fetch, num_threads=self._num_threads)
        except RuntimeError:  # hnswlib found fewer than `fetch` (sparse graph after many deletes)
            return self._scan(queries, fetch)
        id_of = self._id_of
        return [
            [Neighbor(id_of[lab], 1.0 - d) for lab, d in zip(lrow, drow, strict=True)]
            for lrow, drow in zip(labels.tolist(), dists.tolist(), strict=True)
        ]

    def _scan(self, queries: np.ndarray, fetch: int) -> list[list[Neighbor]]:
        """Exact top-`fetch` over every live vector, read back from hnswlib in chunks."""
        labels = np.fromiter(self._id_of, dtype=np.uint64, count=len(self._id_of))
        best_scores = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
        best_labels = np.empty((queries.shape[0], 0), dtype=np.uint64)
        for start in range(0, labels.size, _SCAN_CHUNK):
            chunk = labels[start : start + _SCAN_CHUNK]
            vecs = np.asarray(self._hnsw.get_items(chunk), dtype=np.float32)
            scores = np.concatenate([best_scores, queries @ vecs.T], axis=1)
            cands = np.concatenate(
                [best_labels, np.broadcast_to(chunk, (queries.shape[0], chunk.size))], axis=1
            )
            top = _top_columns(scores, fetch)
            best_scores = np.take_along_axis(scores, top, axis=1)
            best_labels = np.take_along_axis(cands, top, axis=1)
        id_of = self._id_of
        return [
            [Neighbor(id_of[lab], s) for lab, s in zip(lrow, srow, strict=True)]
            for lrow, srow in zip(best_labels.tolist(), best_scores.tolist(), strict=True)
        ]

    # ---- writes ----
    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        known = np.fromiter((i in self._label_of for i in ids), dtype=bool, count=len(ids))
        start = 0
        while start < len(ids):
            end = min(len(ids), start + self._slice_rows())
            self._reserve(int((~known[start:end]).sum()))
            began = time.perf_counter()
            with self._lock.write:
                self._write_slice(ids[start:end], vectors[start:end], known[start:end])
                self._version += 1
            elapsed = time.perf_counter() - began
            # Moving average of the cost per item sizes the next slice.
            self._seconds_per_item = 0.7 * self._seconds_per_item + 0.3 * elapsed / (end - start)
            start = end

    def _slice_rows(self) -> int:
        if self.write_budget_ms is None:
            return 1 << 62
        return max(1, int(self.write_budget_ms / 1e3 / self._seconds_per_item))

    def _reserve(self, new_items: int) -> None:
        """Double the capacity (in its own exclusive slice) before `new_items` could overflow it.

        New items fill deleted slots first, so slots in use afterwards are
        max(slots in use now, live + new).
        """
        needed = max(int(self._hnsw.element_count), len(self._label_of) + new_items)
        capacity = self.capacity
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        with self._lock.write:
            self._hnsw.resize_index(capacity)
            self._version += 1

    def _write_slice(self, ids: list[str], vectors: np.ndarray, known: np.ndarray) -> None:
        if known.any():
            labels = np.fromiter(
                (self._label_of[i] for i, k in zip(ids, known, strict=True) if k), dtype=np.uint64
            )
            # A live label updates in place (hnswlib re-links its neighbourhood).
            self._hnsw.add_items(vectors[known], labels, num_threads=self._num_threads)
        if not known.all():
            new_ids = [i for i, k in zip(ids, known, strict=True) if not k]
            labels = np.arange(self._next_label, self._next_label + len(new_ids), dtype=np.uint64)
            self._hnsw.add_items(
                vectors[~known], labels, num_threads=self._num_threads, replace_deleted=True
            )
            self._next_label += len(new_ids)
            for item_id, label in zip(new_ids, labels.tolist(), strict=True):
                self._label_of[item_id] = label
                self._id_of[label] = item_id

    def _apply_delete(self, ids: list[str]) -> int:
        present = [i for i in ids if i in self._label_of]
        for start in range(0, len(present), _DELETE_CHUNK):
            with self._lock.write:
                for item_id in present[start : start + _DELETE_CHUNK]:
                    label = self._label_of.pop(item_id)
                    del self._id_of[label]
                    self._hnsw.mark_deleted(label)
                self._version += 1
        return len(present)

    # ---- snapshots ----
    def snapshot(self, directory: str | Path, offsets: Mapping[str, int], *, keep: int = 2) -> Path:
        """Write index + label map + the Kafka offsets it reflects under `directory`.

        Each snapshot is a new generation ``directory/snap-NNNNNNNNNN`` written to a
        temp dir, checksummed in a manifest, fsynced and renamed into place, so a crash
        leaves either the whole snapshot or none. The newest `keep` generations stay.
        `offsets` maps "topic:partition" to the next offset to consume. Queries go on
        while it runs; writes wait.
        """
        offsets_json = {str(tp): int(off) for tp, off in offsets.items()}
        with self._writer:  # no write can change the index or the maps meanwhile
            manifest = {
                "format": _SNAPSHOT_FORMAT,
                "format_version": _SNAPSHOT_FORMAT_VERSION,
                "dim": self._dim,
                "space": "ip",
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self._ef,
                "num_threads": self._num_threads,
                "write_budget_ms": self.write_budget_ms,
                "capacity": self.capacity,
                "live": len(self._label_of),
                "next_label": self._next_label,
                "version": self._version,
                "offsets": offsets_json,
            }

            def write_files(tmp: Path) -> None:
                self._hnsw.save_index(str(tmp / _INDEX_FILE))
                labels = {"ids": list(self._label_of), "labels": list(self._label_of.values())}
                (tmp / _LABELS_FILE).write_text(json.dumps(labels), encoding="utf-8")

            return write_snapshot(Path(directory), write_files, manifest, keep=keep)

    @classmethod
    def restore(cls, directory: str | Path) -> tuple[ItemIndex, dict[str, int]] | None:
        """Load the newest intact snapshot under `directory` (or `directory` itself).

        Returns ``(index, offsets)``; a corrupt or half-written generation is skipped
        with a warning (an older intact one is used instead), and None with a warning
        means no usable snapshot: replay the topic from the start.
        """
        for path, manifest in iter_snapshots(Path(directory)):
            try:
                return cls._load(path, manifest)
            except (SnapshotError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring item-index snapshot %s: %s", path, exc)
        log.warning("no usable item-index snapshot under %s; full replay needed", directory)
        return None

    @classmethod
    def _load(cls, path: Path, manifest: Mapping[str, Any]) -> tuple[ItemIndex, dict[str, int]]:
        if manifest.get("format") != _SNAPSHOT_FORMAT or manifest.get("format_version") != 1:
            raise SnapshotError(f"unknown format {manifest.get('format')!r}")
        labels = json.loads((path / _LABELS_FILE).read_text(encoding="utf-8"))
        ids, label_list = labels["ids"], [int(x) for x in labels["labels"]]
        if len(ids) != len(label_list) or len(ids) != manifest["live"]:
            raise SnapshotError("label map does not match the manifest")
        if len(set(ids)) != len(ids) or len(set(label_list)) != len(label_list):
            raise SnapshotError("label map has duplicates")
        next_label = int(manifest["next_label"])
        if label_list and max(label_list) >= next_label:
            raise SnapshotError("label map has labels beyond next_label")

        index = cls.__new__(cls)
        _VectorIndex.__init__(index, int(manifest["dim"]))
        index._hnsw = hnswlib.Index(space="ip", dim=index._dim)
        index._hnsw.load_index(str(path / _INDEX_FILE), allow_replace_deleted=True)
        if not set(label_list) <= set(index._hnsw.get_ids_list()):
            raise SnapshotError("label map names labels the index does not hold")
        index._label_of = dict(zip(ids, label_list, strict=True))
        index._id_of = dict(zip(label_list, ids, strict=True))
        index._next_label = next_label
        index._version = int(manifest["version"])
        index._configure(
            int(manifest["ef"]), int(manifest["num_threads"]), manifest["write_budget_ms"]
        )
        offsets = {str(tp): int(off) for tp, off in manifest["offsets"].items()}
        return index, offsets


class ExactIndex(_VectorIndex):
    """Brute-force cosine k-NN (numpy matmul + argpartition), same interface as `ItemIndex`.

    The recall baseline, and fine on its own for catalogs up to ~1e5 items.
    `initial_capacity` rows (1024) are allocated up front and doubled as needed;
    `ef` is accepted and ignored.
    """

    def __init__(self, dim: int, *, initial_capacity: int = 1024) -> None:
        super().__init__(dim)
        self._matrix = np.zeros((max(1, int(initial_capacity)), self._dim), dtype=np.float32)
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}

    def _live_count(self) -> int:
        return len(self._ids)

    def _has(self, item_id: str) -> bool:
        return item_id in self._row_of

    def _live_ids(self) -> list[str]:
        return list(self._ids)

    def _vector(self, item_id: str) -> np.ndarray | None:
        row = self._row_of.get(item_id)
        return None if row is None else self._matrix[row].copy()

    def _search(self, queries: np.ndarray, fetch: int) -> list[list[Neighbor]]:
        matrix = self._matrix[: len(self._ids)]
        ids = self._ids
        out: list[list[Neighbor]] = []
        for start in range(0, queries.shape[0], _QUERY_CHUNK):
            scores = queries[start : start + _QUERY_CHUNK] @ matrix.T
            top = _top_columns(scores, fetch)
            for rows, srow in zip(
                top.tolist(), np.take_along_axis(scores, top, axis=1).tolist(), strict=True
            ):
                out.append([Neighbor(ids[r], s) for r, s in zip(rows, srow, strict=True)])
        return out

    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        rows = np.fromiter((self._row_of.get(i, -1) for i in ids), dtype=np.intp, count=len(ids))
        new = rows < 0
        with self._lock.write:
            self._matrix[rows[~new]] = vectors[~new]
            n, added = len(self._ids), int(new.sum())
            if n + added > self._matrix.shape[0]:
                grown = np.zeros((max(2 * self._matrix.shape[0], n + added), self._dim), np.float32)
                grown[:n] = self._matrix[:n]
                self._matrix = grown
            self._matrix[n : n + added] = vectors[new]
            for offset, item_id in enumerate(
                i for i, is_new in zip(ids, new, strict=True) if is_new
            ):
                self._row_of[item_id] = n + offset
                self._ids.append(item_id)
            self._version += 1

    def _apply_delete(self, ids: list[str]) -> int:
        removed = 0
        with self._lock.write:
            for item_id in ids:
                row = self._row_of.pop(item_id, None)
                if row is None:
                    continue
                last_id = self._ids.pop()
                if last_id != item_id:  # move the last row into the hole
                    self._matrix[row] = self._matrix[len(self._ids)]
                    self._ids[row] = last_id
                    self._row_of[last_id] = row
                removed += 1
            self._version += 1
        return removed


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the `k` largest scores per row, best first."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)

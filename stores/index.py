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
#590); `resize_index` reallocates the graph under the readers' feet. So
readers and the writer never touch the same hnswlib object at the same time:

* ``copies=2`` (default, left-right; `stores._concurrency.TwoCopies`): two
  copies of the graph, each with its own id <-> label maps. Queries run on the
  published copy; a write goes to the other one, which is then published, and
  once the last query still inside the old copy has left (queries in flight:
  sub-millisecond) the old copy is caught up by replaying the write (a bulk
  load, at least half the index, is cloned instead). Queries never wait for
  writes; the price is twice the memory and twice the insert CPU.
* ``copies=1`` (`stores._concurrency.OneCopy`): one copy under a phase-fair
  reader/writer lock. Writes are cut into slices of about `write_budget_ms`
  (5 ms), so a query waits at most one slice; half the memory.

Either way one writer mutex serializes upserts, deletes, `ef` changes and
snapshots; a snapshot reads the published copy while queries go on. hnswlib
releases the GIL inside `knn_query`, so concurrent queries use all cores. A
query with an `ef` other than the index's own needs hnswlib's shared `ef`
changed, so it takes the writer mutex and runs on the unpublished copy (or
exclusively, with one copy): meant for sweeps and tests, not for serving.
`version` is bumped after each write completes: read it before querying to key
cached results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import hnswlib
import numpy as np

from stores._concurrency import Copies, OneCopy, TwoCopies
from stores.hnsw_file import scrub_deleted_vectors
from stores.snapshot import SnapshotError, iter_snapshots, write_snapshot

log = logging.getLogger(__name__)

ItemFilter = Callable[[str], bool]
S = TypeVar("S")

_SNAPSHOT_FORMAT = "recstream.item_index"
_SNAPSHOT_FORMAT_VERSION = 1
_EXACT_SNAPSHOT_FORMAT = "recstream.exact_index"
_VECTORS_FILE = "vectors.npy"
_IDS_FILE = "ids.json"
_INDEX_FILE = "index.hnsw"
_LABELS_FILE = "labels.json"
# Asking for more than this fraction of the live items: brute force beats the graph and is exact.
_SCAN_FRACTION = 0.25
_SCAN_CHUNK = 16_384
_QUERY_CHUNK = 256


class Neighbor(NamedTuple):
    """One search hit: the item and its cosine similarity to the query."""

    item_id: str
    score: float


Pair = tuple[str, float]
"""A search hit as a plain ``(item_id, score)`` tuple (what `knn_pairs` returns)."""


def _as_neighbors(rows: list[list[Pair]]) -> list[list[Neighbor]]:
    # tuple.__new__ skips NamedTuple's Python-level __new__: ~3x faster for a hot loop.
    new = tuple.__new__
    return [[new(Neighbor, h) for h in row] for row in rows]


def normalize_rows(matrix: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
    """Unit-length float32 copy of `matrix` (2-D); zero or non-finite rows raise ValueError."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", m, m))
    if norms.size and not (norms.min() > 0.0 and norms.max() < np.inf):  # NaN fails both
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0.0))
        where = [ids[i] for i in bad[:5]] if ids is not None else bad[:5].tolist()
        raise ValueError(
            f"{bad.size} vector(s) are zero or not finite and cannot be normalized: {where}"
        )
    return m / norms[:, None]  # a new C-contiguous float32 array


class _VectorIndex(ABC, Generic[S]):
    """Shared front end: input checks, normalization, exclude/filter over-fetch.

    A subclass keeps its data in states of type S shared through `self._copies`
    and implements the hooks below on one state.
    """

    _copies: Copies[S]

    def __init__(self, dim: int) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = int(dim)
        self._writer = threading.Lock()  # one mutation (or snapshot) at a time
        self._version = 0

    # ---- hooks, on one consistent state ----
    @abstractmethod
    def _count(self, state: S) -> int: ...

    @abstractmethod
    def _has(self, state: S, item_id: str) -> bool: ...

    @abstractmethod
    def _live_ids(self, state: S) -> list[str]: ...

    @abstractmethod
    def _vector(self, state: S, item_id: str) -> np.ndarray | None: ...

    @abstractmethod
    def _search(self, state: S, queries: np.ndarray, fetch: int) -> list[list[Pair]]:
        """Best `fetch` live items per (unit) query row, best first."""

    @abstractmethod
    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        """Write through `self._copies`; called under the writer mutex."""

    @abstractmethod
    def _apply_delete(self, ids: list[str]) -> int:
        """Write through `self._copies`; called under the writer mutex."""

    def _query_section(self, ef: int | None) -> contextlib.AbstractContextManager[S]:
        return self._copies.reading()

    # ---- public API ----
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def version(self) -> int:
        """Monotonic counter, bumped after every write (read it before querying to key a cache)."""
        return self._version

    def __len__(self) -> int:
        """Live items."""
        with self._copies.reading() as state:
            return self._count(state)

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        with self._copies.reading() as state:
            return self._has(state, item_id)

    def ids(self) -> list[str]:
        """The live item ids (a copy, in no particular order)."""
        with self._copies.reading() as state:
            return self._live_ids(state)

    def vector(self, item_id: str) -> np.ndarray | None:
        """The item's stored (unit-normalized) vector, or None when unknown."""
        with self._copies.reading() as state:
            return self._vector(state, item_id)

    def upsert(self, ids: Sequence[str] | str, vectors: np.ndarray) -> None:
        """Add new ids and replace the vectors of known ones (a batch; the last duplicate wins).

        Vectors are normalized here; a zero or non-finite vector raises ValueError and
        nothing in the batch is written.
        """
        id_list, matrix = self._prepare_upsert(ids, vectors)
        if id_list:
            with self._writer:
                self._apply_upsert(id_list, matrix)
                self._version += 1

    def delete(self, ids: Iterable[str] | str) -> int:
        """Remove items; returns how many were present. A deleted id is never returned
        again (unless upserted anew)."""
        id_list = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        if not id_list:
            return 0
        with self._writer:
            removed = self._apply_delete(id_list)
            if removed:
                self._version += 1
            return removed

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
        the search breadth for this call (HNSW only; slow path, see the module doc).
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
        return _as_neighbors(self.knn_pairs(queries, k, ef=ef, exclude=exclude, filter=filter))

    def knn_pairs(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef: int | None = None,
        exclude: Collection[str] | None = None,
        filter: ItemFilter | None = None,
    ) -> list[list[Pair]]:
        """`knn_batch` with plain ``(item_id, score)`` tuples: for hot paths (serving)."""
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
        excluded = exclude if isinstance(exclude, set | frozenset) else frozenset(exclude or ())
        with self._query_section(ef) as state:
            return self._knn_in(state, q, k, excluded, filter)

    # ---- internals ----
    def _knn_in(
        self, state: S, q: np.ndarray, k: int, excluded: Collection[str], keep: ItemFilter | None
    ) -> list[list[Pair]]:
        live = self._count(state)
        if live == 0:
            return [[] for _ in range(q.shape[0])]
        if not excluded and keep is None:
            return self._search(state, q, min(k, live))
        # Over-fetch for what exclude/filter will drop, then widen 4x for rows still short.
        fetch = min(live, k + min(len(excluded), k) + (k if keep is not None else 0))
        results: list[list[Pair]] = [[] for _ in range(q.shape[0])]
        pending = np.arange(q.shape[0])
        while pending.size:
            short = []
            hits_per_row = self._search(state, q[pending], fetch)
            for row, hits in zip(pending.tolist(), hits_per_row, strict=True):
                valid = [h for h in hits if h[0] not in excluded and (keep is None or keep(h[0]))]
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


class _Graph:
    """One copy of the HNSW graph with its own id <-> label maps, always changed together."""

    __slots__ = ("hnsw", "id_of", "label_of")

    def __init__(self, hnsw: hnswlib.Index, label_of: dict[str, int]) -> None:
        self.hnsw = hnsw
        self.label_of = label_of
        self.id_of = {label: item_id for item_id, label in label_of.items()}

    def clone(self) -> _Graph:
        return _Graph(hnswlib.Index(self.hnsw), dict(self.label_of))

    def size(self) -> int:
        return int(self.hnsw.element_count)


class ItemIndex(_VectorIndex[_Graph]):
    """Approximate cosine k-NN over a live catalog (hnswlib HNSW, inner product on unit vectors).

    Parameters (graph defaults as hnswlib's):
        dim: vector dimension.
        M: graph degree (16); more = better recall, more memory, slower inserts.
        ef_construction: build-time breadth (200).
        ef: query-time breadth (64); settable via `index.ef`. hnswlib does not save it;
            snapshots do.
        initial_capacity: slots allocated up front (1024); doubled before they run out.
        copies: 2 (default) = queries never wait for writes, at twice the memory and
            insert CPU; 1 = half the memory, queries wait up to one write slice. See the
            module docstring.
        num_threads: threads hnswlib uses inside one add or batch query (1; -1 = all
            cores). Concurrent callers already run in parallel, so 1 suits serving;
            raise it for bulk loads.
        write_budget_ms: with copies=1, the length of one exclusive write slice (5.0),
            i.e. the most a query waits for a writer; None = one slice per write.
        random_seed: hnswlib level-generator seed (100).

    String ids map to hnswlib integer labels through a map saved with snapshots.
    Labels are never reused: an upsert of a known id inserts its new vector under a new
    label and marks the old one deleted (hnswlib's in-place update costs ~7x an insert).
    Slots are: new vectors fill free slots first, then deleted ones
    (``allow_replace_deleted``), and only when neither is left is the index resized to
    double its capacity. Deleted points stay in the graph as waypoints until reused.
    """

    def __init__(
        self,
        dim: int,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        initial_capacity: int = 1024,
        copies: int = 2,
        num_threads: int = 1,
        write_budget_ms: float | None = 5.0,
        random_seed: int = 100,
    ) -> None:
        super().__init__(dim)
        if M < 2 or ef_construction < 1 or initial_capacity < 1:
            raise ValueError(
                "need M >= 2, ef_construction >= 1, initial_capacity >= 1; got "
                f"M={M}, ef_construction={ef_construction}, initial_capacity={initial_capacity}"
            )
        hnsw = hnswlib.Index(space="ip", dim=self._dim)
        hnsw.init_index(
            max_elements=int(initial_capacity),
            M=int(M),
            ef_construction=int(ef_construction),
            random_seed=int(random_seed),
            allow_replace_deleted=True,
        )
        self._setup(_Graph(hnsw, {}), ef, copies, num_threads, write_budget_ms, next_label=0)

    def _setup(
        self,
        graph: _Graph,
        ef: int,
        copies: int,
        num_threads: int,
        write_budget_ms: float | None,
        next_label: int,
    ) -> None:
        if ef < 1:
            raise ValueError(f"ef must be positive, got {ef}")
        self._ef = int(ef)
        self._num_threads = int(num_threads)
        graph.hnsw.set_ef(self._ef)
        graph.hnsw.set_num_threads(self._num_threads)
        if copies == 2:
            self._copies = TwoCopies(graph)
        elif copies == 1:
            self._copies = OneCopy(graph, write_budget_ms)
        else:
            raise ValueError(f"copies must be 1 or 2, got {copies}")
        self._write_budget_ms = write_budget_ms
        self._next_label = next_label

    # ---- configuration ----
    @property
    def ef(self) -> int:
        """Query-time breadth (hnswlib `ef`); higher = better recall, slower queries."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"ef must be positive, got {value}")
        with self._writer:
            self._copies.write(lambda g, _: g.hnsw.set_ef(int(value)), 0, "ef")
            self._ef = int(value)
            self._version += 1

    @property
    def num_threads(self) -> int:
        """Threads hnswlib uses inside one add or batch query (-1 = all cores)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        with self._writer:  # read by queries without a lock: an int swap is atomic
            self._num_threads = int(value)

    @property
    def copies(self) -> int:
        """Copies of the graph kept (see the class docstring)."""
        return self._copies.copies

    @property
    def capacity(self) -> int:
        """Allocated slots per copy (live + deleted-but-unreused + free)."""
        with self._copies.reading() as g:
            return int(g.hnsw.max_elements)

    def nbytes(self) -> int:
        """Serialized size of one copy (hnswlib `index_file_size`); memory is ~copies x this."""
        with self._copies.reading() as g:
            return int(g.hnsw.index_file_size())

    # ---- hooks ----
    def _count(self, g: _Graph) -> int:
        return len(g.label_of)

    def _has(self, g: _Graph, item_id: str) -> bool:
        return item_id in g.label_of

    def _live_ids(self, g: _Graph) -> list[str]:
        return list(g.label_of)

    def _vector(self, g: _Graph, item_id: str) -> np.ndarray | None:
        label = g.label_of.get(item_id)
        if label is None:
            return None
        return np.asarray(g.hnsw.get_items([label]), dtype=np.float32)[0]

    def _query_section(self, ef: int | None) -> contextlib.AbstractContextManager[_Graph]:
        if ef is None or ef == self._ef:
            return self._copies.reading()
        return self._private_with_ef(ef)

    @contextlib.contextmanager
    def _private_with_ef(self, ef: int) -> Iterator[_Graph]:
        with self._writer, self._copies.private() as g:
            g.hnsw.set_ef(int(ef))
            try:
                yield g
            finally:
                g.hnsw.set_ef(self._ef)

    def _search(self, g: _Graph, queries: np.ndarray, fetch: int) -> list[list[Pair]]:
        if fetch >= _SCAN_FRACTION * len(g.label_of):
            return self._scan(g, queries, fetch)
        try:
            labels, dists = g.hnsw.knn_query(queries, k=fetch, num_threads=self._num_threads)
        except RuntimeError:  # hnswlib found fewer than `fetch` (sparse graph after many deletes)
            return self._scan(g, queries, fetch)
        ids = map(g.id_of.__getitem__, labels.ravel().tolist())
        hits = list(zip(ids, (1.0 - dists.ravel()).tolist(), strict=True))
        return [hits[r * fetch : (r + 1) * fetch] for r in range(labels.shape[0])]

    def _scan(self, g: _Graph, queries: np.ndarray, fetch: int) -> list[list[Pair]]:
        """Exact top-`fetch` over every live vector, read back from hnswlib in chunks."""
        labels = np.fromiter(g.id_of, dtype=np.uint64, count=len(g.id_of))
        nq = queries.shape[0]
        best_scores = np.empty((nq, 0), dtype=np.float32)
        best_labels = np.empty((nq, 0), dtype=np.uint64)
        for start in range(0, labels.size, _SCAN_CHUNK):
            chunk = labels[start : start + _SCAN_CHUNK]
            vectors = np.asarray(g.hnsw.get_items(chunk), dtype=np.float32)
            scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
            candidates = np.concatenate(
                [best_labels, np.broadcast_to(chunk, (nq, chunk.size))], axis=1
            )
            top = _top_columns(scores, fetch)
            best_scores = np.take_along_axis(scores, top, axis=1)
            best_labels = np.take_along_axis(candidates, top, axis=1)
        id_of = g.id_of
        return [
            [(id_of[lab], s) for lab, s in zip(lrow, srow, strict=True)]
            for lrow, srow in zip(best_labels.tolist(), best_scores.tolist(), strict=True)
        ]

    # ---- writes ----
    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        # Every row gets a fresh label; a known id's old label is marked deleted. hnswlib's
        # in-place update (and its replace_deleted, which is one) re-links every neighbour
        # of the point: ~7x the cost of a plain insert (measured at 384-d, M=16), so it is
        # kept for when the free slots have run out.
        current = self._copies.latest().label_of
        old_labels = [current.get(i) for i in ids]
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.uint64)
        self._next_label += len(ids)
        num_threads = self._num_threads

        def upsert_rows(g: _Graph, rows: slice) -> None:
            row_ids, lab, vec = ids[rows], labels[rows], vectors[rows]
            for old in old_labels[rows]:
                if old is not None:
                    g.hnsw.mark_deleted(old)
                    del g.id_of[old]
            free = int(g.hnsw.max_elements) - int(g.hnsw.element_count)
            deleted = int(g.hnsw.element_count) - len(g.id_of)
            if len(row_ids) > free + deleted:  # grow by doubling: the fast path stays open
                g.hnsw.resize_index(
                    _doubled(int(g.hnsw.max_elements), int(g.hnsw.element_count) + len(row_ids))
                )
                free = int(g.hnsw.max_elements) - int(g.hnsw.element_count)
            fresh = min(free, len(row_ids))
            if fresh:
                g.hnsw.add_items(vec[:fresh], lab[:fresh], num_threads=num_threads)
            if fresh < len(row_ids):  # into deleted slots, rather than growing
                g.hnsw.add_items(
                    vec[fresh:], lab[fresh:], num_threads=num_threads, replace_deleted=True
                )
            new_labels = lab.tolist()
            g.label_of.update(zip(row_ids, new_labels, strict=True))
            g.id_of.update(zip(new_labels, row_ids, strict=True))

        self._copies.write(upsert_rows, len(ids), "upsert")

    def _apply_delete(self, ids: list[str]) -> int:
        current = self._copies.latest().label_of
        present = [(i, current[i]) for i in ids if i in current]

        def delete_rows(g: _Graph, rows: slice) -> None:
            for item_id, label in present[rows]:
                g.hnsw.mark_deleted(label)
                del g.label_of[item_id]
                del g.id_of[label]

        self._copies.write(delete_rows, len(present), "delete")
        return len(present)

    # ---- snapshots ----
    def snapshot(self, directory: str | Path, offsets: Mapping[str, int], *, keep: int = 2) -> Path:
        """Write index + label map + the Kafka offsets it reflects under `directory`.

        Each snapshot is a new generation ``directory/snap-NNNNNNNNNN`` written to a
        temp dir, checksummed in a manifest, fsynced and renamed into place, so a crash
        leaves either the whole snapshot or none. The newest `keep` generations stay.
        `offsets` maps "topic:partition" to the next offset to consume. Queries go on
        while it runs; writes wait. Deleted (and replaced) elements stay in the graph as
        waypoints, but their vectors are zeroed in the file: a snapshot carries no deleted
        vector (`stores.hnsw_file`).
        """
        offsets_json = {str(tp): int(off) for tp, off in offsets.items()}
        with self._writer:  # nothing changes the published copy meanwhile
            g = self._copies.latest()
            manifest = {
                "format": _SNAPSHOT_FORMAT,
                "format_version": _SNAPSHOT_FORMAT_VERSION,
                "dim": self._dim,
                "space": "ip",
                "M": int(g.hnsw.M),
                "ef_construction": int(g.hnsw.ef_construction),
                "ef": self._ef,
                "copies": self.copies,
                "num_threads": self._num_threads,
                "write_budget_ms": self._write_budget_ms,
                "capacity": int(g.hnsw.max_elements),
                "live": len(g.label_of),
                "next_label": self._next_label,
                "version": self._version,
                "offsets": offsets_json,
            }

            def write_files(tmp: Path) -> None:
                g.hnsw.save_index(str(tmp / _INDEX_FILE))
                if g.size() > len(g.label_of):  # deleted elements: their vectors must not go
                    scrub_deleted_vectors(tmp / _INDEX_FILE, self._dim)
                labels = {"ids": list(g.label_of), "labels": list(g.label_of.values())}
                (tmp / _LABELS_FILE).write_text(json.dumps(labels), encoding="utf-8")

            return write_snapshot(Path(directory), write_files, manifest, keep=keep)

    @classmethod
    def restore(
        cls, directory: str | Path, *, copies: int | None = None
    ) -> tuple[ItemIndex, dict[str, int]] | None:
        """Load the newest intact snapshot under `directory` (or `directory` itself).

        Returns ``(index, offsets)``: replay the topics from those offsets. A corrupt or
        half-written generation is skipped with a warning (an older intact one is used
        instead); None, with a warning, means no usable snapshot: replay from the start.
        `copies` overrides the saved setting.
        """
        for path, manifest in iter_snapshots(Path(directory)):
            try:
                return cls._load(path, manifest, copies)
            except (SnapshotError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring item-index snapshot %s: %s", path, exc)
        log.warning("no usable item-index snapshot under %s; full replay needed", directory)
        return None

    @classmethod
    def _load(
        cls, path: Path, manifest: Mapping[str, Any], copies: int | None
    ) -> tuple[ItemIndex, dict[str, int]]:
        if (
            manifest.get("format") != _SNAPSHOT_FORMAT
            or manifest.get("format_version") != _SNAPSHOT_FORMAT_VERSION
        ):
            raise SnapshotError(f"unknown format {manifest.get('format')!r}")
        labels = json.loads((path / _LABELS_FILE).read_text(encoding="utf-8"))
        ids, label_list = labels["ids"], [int(x) for x in labels["labels"]]
        if len(ids) != len(label_list) or len(ids) != manifest["live"]:
            raise SnapshotError("label map does not match the manifest")
        label_of = dict(zip(ids, label_list, strict=True))
        if len(label_of) != len(ids) or len(set(label_list)) != len(label_list):
            raise SnapshotError("label map has duplicates")
        next_label = int(manifest["next_label"])
        if label_list and max(label_list) >= next_label:
            raise SnapshotError("label map has labels beyond next_label")

        index = cls.__new__(cls)
        _VectorIndex.__init__(index, int(manifest["dim"]))
        hnsw = hnswlib.Index(space="ip", dim=index._dim)
        hnsw.load_index(str(path / _INDEX_FILE), allow_replace_deleted=True)
        if not set(label_list) <= set(hnsw.get_ids_list()):
            raise SnapshotError("label map names labels the index does not hold")
        index._setup(
            _Graph(hnsw, label_of),
            int(manifest["ef"]),
            int(copies if copies is not None else manifest["copies"]),
            int(manifest["num_threads"]),
            manifest["write_budget_ms"],
            next_label,
        )
        index._version = int(manifest["version"])
        offsets = {str(tp): int(off) for tp, off in manifest["offsets"].items()}
        return index, offsets


class _Rows:
    """ExactIndex state: unit vectors in rows [0, len(ids)) of a growing matrix."""

    __slots__ = ("ids", "matrix", "row_of")

    def __init__(self, dim: int, capacity: int) -> None:
        self.matrix = np.zeros((max(1, capacity), dim), dtype=np.float32)
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}


class ExactIndex(_VectorIndex[_Rows]):
    """Brute-force cosine k-NN (numpy matmul + argpartition), same interface as `ItemIndex`.

    The recall baseline, and fine on its own for catalogs up to ~1e5 items.
    `initial_capacity` rows (1024) are allocated up front and doubled as needed;
    `ef` is accepted and ignored. Shared under a reader/writer lock (`OneCopy`).
    Snapshots and restores like `ItemIndex` (vectors + ids + offsets, checksummed).
    """

    def __init__(self, dim: int, *, initial_capacity: int = 1024) -> None:
        super().__init__(dim)
        self._copies = OneCopy(_Rows(self._dim, int(initial_capacity)))

    def _count(self, s: _Rows) -> int:
        return len(s.ids)

    def _has(self, s: _Rows, item_id: str) -> bool:
        return item_id in s.row_of

    def _live_ids(self, s: _Rows) -> list[str]:
        return list(s.ids)

    def _vector(self, s: _Rows, item_id: str) -> np.ndarray | None:
        row = s.row_of.get(item_id)
        return None if row is None else s.matrix[row].copy()

    def _search(self, s: _Rows, queries: np.ndarray, fetch: int) -> list[list[Pair]]:
        matrix, ids = s.matrix[: len(s.ids)], s.ids
        out: list[list[Pair]] = []
        for start in range(0, queries.shape[0], _QUERY_CHUNK):
            scores = queries[start : start + _QUERY_CHUNK] @ matrix.T
            top = _top_columns(scores, fetch)
            top_scores = np.take_along_axis(scores, top, axis=1)
            for rows, srow in zip(top.tolist(), top_scores.tolist(), strict=True):
                out.append([(ids[r], sc) for r, sc in zip(rows, srow, strict=True)])
        return out

    def _apply_upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        current = self._copies.latest().row_of
        rows = np.fromiter((current.get(i, -1) for i in ids), dtype=np.intp, count=len(ids))

        def upsert_rows(s: _Rows, part: slice) -> None:
            r, v = rows[part], vectors[part]
            new = r < 0
            s.matrix[r[~new]] = v[~new]
            n, added = len(s.ids), int(new.sum())
            if n + added > s.matrix.shape[0]:
                grown = np.zeros((_doubled(s.matrix.shape[0], n + added), self._dim), np.float32)
                grown[:n] = s.matrix[:n]
                s.matrix = grown
            s.matrix[n : n + added] = v[new]
            new_ids = [ids[i] for i in np.flatnonzero(new) + part.start]
            s.row_of.update(zip(new_ids, range(n, n + added), strict=True))
            s.ids.extend(new_ids)

        self._copies.write(upsert_rows, len(ids), "upsert")

    def _apply_delete(self, ids: list[str]) -> int:
        current = self._copies.latest().row_of
        present = [i for i in ids if i in current]

        def delete_rows(s: _Rows, part: slice) -> None:
            for item_id in present[part]:
                row = s.row_of.pop(item_id)
                last_id = s.ids.pop()
                if last_id != item_id:  # move the last row into the hole
                    s.matrix[row] = s.matrix[len(s.ids)]
                    s.ids[row] = last_id
                    s.row_of[last_id] = row

        self._copies.write(delete_rows, len(present), "delete")
        return len(present)

    # ---- snapshots (as ItemIndex's, so a small catalog can run on this one) ----
    def snapshot(self, directory: str | Path, offsets: Mapping[str, int], *, keep: int = 2) -> Path:
        """Write the vectors + ids + Kafka `offsets` as a new generation under `directory`
        (atomic and checksummed like `ItemIndex.snapshot`); returns its path."""
        offsets_json = {str(tp): int(off) for tp, off in offsets.items()}
        with self._writer, self._copies.reading() as s:
            manifest = {
                "format": _EXACT_SNAPSHOT_FORMAT,
                "format_version": _SNAPSHOT_FORMAT_VERSION,
                "dim": self._dim,
                "live": len(s.ids),
                "version": self._version,
                "offsets": offsets_json,
            }

            def write_files(tmp: Path) -> None:
                np.save(tmp / _VECTORS_FILE, s.matrix[: len(s.ids)], allow_pickle=False)
                (tmp / _IDS_FILE).write_text(json.dumps(s.ids), encoding="utf-8")

            return write_snapshot(Path(directory), write_files, manifest, keep=keep)

    @classmethod
    def restore(cls, directory: str | Path) -> tuple[ExactIndex, dict[str, int]] | None:
        """Load the newest intact snapshot under `directory`: ``(index, offsets)``, or None
        (with a warning) when there is none usable, as `ItemIndex.restore`."""
        for path, manifest in iter_snapshots(Path(directory)):
            try:
                return cls._load(path, manifest)
            except (SnapshotError, OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring exact-index snapshot %s: %s", path, exc)
        log.warning("no usable exact-index snapshot under %s; full replay needed", directory)
        return None

    @classmethod
    def _load(cls, path: Path, manifest: Mapping[str, Any]) -> tuple[ExactIndex, dict[str, int]]:
        if (
            manifest.get("format") != _EXACT_SNAPSHOT_FORMAT
            or manifest.get("format_version") != _SNAPSHOT_FORMAT_VERSION
        ):
            raise SnapshotError(f"unknown format {manifest.get('format')!r}")
        ids = json.loads((path / _IDS_FILE).read_text(encoding="utf-8"))
        matrix = np.load(path / _VECTORS_FILE, allow_pickle=False)
        dim = int(manifest["dim"])
        if matrix.shape != (len(ids), dim) or len(ids) != manifest["live"]:
            raise SnapshotError("vectors, ids and manifest disagree on the item count")
        if len(set(ids)) != len(ids):
            raise SnapshotError("ids have duplicates")
        index = cls(dim, initial_capacity=max(1, len(ids)))
        with index._copies.private() as s:
            s.matrix[: len(ids)] = matrix
            s.ids = list(ids)
            s.row_of = {item_id: row for row, item_id in enumerate(ids)}
        index._version = int(manifest["version"])
        return index, {str(tp): int(off) for tp, off in manifest["offsets"].items()}


def _doubled(capacity: int, needed: int) -> int:
    while capacity < needed:
        capacity *= 2
    return capacity


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the `k` largest scores per row, best first."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)

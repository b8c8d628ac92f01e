"""The recommender: a user's interests -> ANN around each medoid -> blended, filtered list.

Pure (no I/O): it reads an item index (``stores.ItemIndex`` or ``ExactIndex``), an in-memory
catalog of item metadata and a popularity model, all kept current by the read models.

Query (PinnerSage):

1. Take the user's top ``interests`` medoids by importance (or sample them proportionally to
   importance with ``sample=True``). Importances come from the ``user-interests`` record, computed
   by the interests worker at the user's last event; the decay multiplies every cluster of a user
   by the same factor as time passes, so these give exactly the quotas "now" would.
2. Search the index around each medoid: one batched k-NN for the medoids not in the per-medoid
   cache (``NeighborCache``; many users share medoids).
3. Blend the lists by importance quotas (``serving.blend``), skipping items the user has seen,
   items no longer in the catalog (deleted) and items failing the filters; if the cached depth
   runs short, search again with the exclusions pushed into the index.
4. A user without interests gets the cold-start list: the most popular items by time-decayed
   engagement counts, marked ``cold_start``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.blend import blend
from serving.popularity import DecayedPopularity

Hits = tuple[tuple[str, float], ...]
"""A medoid's neighbours, best first: ``(item_id, cosine similarity)``."""


class VectorIndex(Protocol):
    """What the recommender needs from ``stores.ItemIndex`` / ``stores.ExactIndex``."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool: ...

    def vector(self, item_id: str) -> np.ndarray | None: ...

    def knn_pairs(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef: int | None = None,
        exclude: Collection[str] | None = None,
        filter: Callable[[str], bool] | None = None,
    ) -> list[list[tuple[str, float]]]: ...


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """Catalog metadata of a live item (from its ``item-embeddings`` record)."""

    title: str = ""
    category: str | None = None
    tags: tuple[str, ...] = ()
    ts: int = 0


@dataclass(frozen=True, slots=True)
class InterestView:
    """One interest of a user as the recommender reads it (from a record's ``InterestSummary``):
    slotted, cheap to rebuild from the profile cache's plain tuples on every query."""

    medoid: str
    importance: float
    size: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserProfile:
    """What serving knows about a user: interests (importance-descending) and seen items."""

    user_id: str
    interests: tuple[InterestView, ...]
    seen: frozenset[str]
    n_actions: int = 0
    last_event_ts: int = 0
    last_event_id: str | None = None
    updated_ms: int = 0  # when the interests worker published the record (wall clock)
    applied_ms: int = 0  # when this replica applied it (wall clock)


@dataclass(frozen=True, slots=True)
class Recommended:
    item_id: str
    score: float
    interest: int | None  # position in Recommendations.interests; None for cold start
    title: str = ""
    category: str | None = None


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    items: list[Recommended]
    cold_start: bool
    interests: list[InterestView] = field(default_factory=list)  # the interests searched
    reason: str = ""


@dataclass(frozen=True)
class RecommendConfig:
    """Query tunables (documented defaults).

    - ``interests``: medoids searched per query (3, as in PinnerSage).
    - ``candidates_per_interest``: neighbours fetched (and cached) per medoid (31: with the
      medoid itself one search of k = 32, the serving index's ``ef``). On 100k clustered
      items the top 20 then share 96.5% of their items with exact search (98.3% at 63 and
      ef 64) for ~40% less search CPU, most of a query's cost. Items the user has seen are
      dropped after the search; when too few remain the query searches again with the
      exclusions inside the index.
    - ``cache_ttl_s`` / ``cache_size``: per-medoid ANN cache (30 s, 20,000 medoids). Changes
      near a cached medoid drop its entry at once; the TTL bounds how long an item that moved
      *away* stays listed.
    - ``max_k``: largest ``k`` a query may ask (200).
    """

    interests: int = 3
    candidates_per_interest: int = 31
    cache_ttl_s: float = 30.0
    cache_size: int = 20_000
    max_k: int = 200


class NeighborCache:
    """ANN results per medoid, dropped when the index changes near the medoid or after a TTL.

    An entry remembers the worst score in its list: a new or moved item whose similarity to the
    medoid reaches it would enter the list, so ``invalidate_near`` drops the entry (one matrix
    product over all cached medoids). Deleted items are filtered by the caller, so a delete only
    drops the entry of the deleted medoid itself. An item moving *away* is left to the TTL.

    Race-free against the writer: read ``epoch`` before searching and pass it to ``put``; a put
    whose search may predate an invalidation is refused. Thread-safe.
    """

    def __init__(
        self,
        dim: int,
        capacity: int = 20_000,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dim = int(dim)
        self.capacity = int(capacity)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, float, Hits, int]] = (
            OrderedDict()
        )  # medoid -> (slot, expires, hits, depth asked); hits a tuple of (id, score) tuples,
        # which the garbage collector untracks (a list would be walked by every collection)
        self._vectors = np.zeros((max(1, self.capacity), self.dim), dtype=np.float32)
        self._worst = np.full(max(1, self.capacity), np.inf, dtype=np.float32)
        self._free = list(range(self.capacity - 1, -1, -1))
        self.epoch = 0
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, medoid: str, depth: int) -> Hits | None:
        with self._lock:
            entry = self._entries.get(medoid)
            if entry is None or entry[3] < depth or entry[1] < self._clock():
                self.misses += 1
                return None
            self._entries.move_to_end(medoid)
            self.hits += 1
            return entry[2]

    def put(
        self,
        medoid: str,
        vector: np.ndarray,
        hits: Sequence[tuple[str, float]],
        depth: int,
        epoch: int,
    ) -> bool:
        if self.capacity == 0:
            return False
        with self._lock:
            if epoch != self.epoch:
                return False
            old = self._entries.pop(medoid, None)
            if old is not None:
                self._free.append(old[0])
            elif not self._free:
                _, (slot, *_rest) = self._entries.popitem(last=False)
                self._free.append(slot)
            slot = self._free.pop()
            self._vectors[slot] = vector
            # A short list (the index had fewer items) takes any newcomer.
            self._worst[slot] = hits[-1][1] if len(hits) >= depth else -np.inf
            self._entries[medoid] = (slot, self._clock() + self.ttl_s, tuple(hits), depth)
            return True

    def invalidate_near(self, vectors: np.ndarray) -> int:
        """Drop entries whose list the given (unit) vectors would enter; returns how many."""
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        with self._lock:
            self.epoch += 1
            if not self._entries or not len(v):
                return 0
            slots = np.fromiter((e[0] for e in self._entries.values()), np.intp, len(self._entries))
            best = (self._vectors[slots] @ v.T).max(axis=1)
            doomed = [
                m
                for m, hit in zip(list(self._entries), best >= self._worst[slots], strict=True)
                if hit
            ]
            for medoid in doomed:
                self._free.append(self._entries.pop(medoid)[0])
            self.invalidations += len(doomed)
            return len(doomed)

    def invalidate(self, medoids: Collection[str]) -> int:
        with self._lock:
            self.epoch += 1
            doomed = [m for m in medoids if m in self._entries]
            for medoid in doomed:
                self._free.append(self._entries.pop(medoid)[0])
            self.invalidations += len(doomed)
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.clear()
            self._free = list(range(self.capacity - 1, -1, -1))


class Recommender:
    """Answers recommendation and similar-item queries from in-memory read models.

    ``catalog`` maps live item ids to their metadata; an item missing from it (deleted, or not
    yet materialized) is never returned.
    """

    def __init__(
        self,
        index: VectorIndex,
        catalog: Mapping[str, ItemInfo],
        popularity: DecayedPopularity,
        config: RecommendConfig | None = None,
        *,
        cache: NeighborCache | None = None,
    ) -> None:
        self.index = index
        self.catalog = catalog
        self.popularity = popularity
        self.config = config or RecommendConfig()
        self.cache = cache or NeighborCache(
            index.dim, self.config.cache_size, self.config.cache_ttl_s
        )

    # -- queries ---------------------------------------------------------------------------
    def recommend(
        self,
        profile: UserProfile | None,
        k: int,
        *,
        user_id: str | None = None,
        exclude_seen: bool = True,
        category: str | None = None,
        sample: bool = False,
        now_ms: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> Recommendations:
        """Up to ``k`` items for the user (``profile`` None = unknown user: cold start)."""
        self._check_k(k)
        uid = profile.user_id if profile is not None else (user_id or "")
        keep = self._keep(category)
        seen: frozenset[str] = profile.seen if profile is not None and exclude_seen else frozenset()
        chosen = self._choose(profile, sample, rng) if profile is not None else []
        if not chosen:
            reason = "unknown user" if profile is None else "no interest with a live medoid"
            return self._cold_start(uid, k, seen, keep, now_ms, reason)
        importances = [i.importance for i in chosen]
        lists = self._neighbors([i.medoid for i in chosen])
        excluded = _Excluded(seen, self.catalog)
        if keep is not None:
            lists = [tuple(h for h in lst if keep(h[0])) for lst in lists]
        picked = blend(lists, importances, k, exclude=excluded)
        if len(picked) < k and len(self.index) > len(picked):
            # The cached depth ran short (many seen items near a medoid, or a narrow filter):
            # search again with the exclusions inside the index, which widens until it has k.
            def live(item_id: str) -> bool:
                return item_id in self.catalog and (keep is None or keep(item_id))

            found = [(i, v) for i in chosen if (v := self.index.vector(i.medoid)) is not None]
            if found:
                chosen = [i for i, _ in found]
                wide = self.index.knn_pairs(
                    np.stack([v for _, v in found]), k, exclude=seen, filter=live
                )
                picked = blend(wide, [i.importance for i in chosen], k, exclude=excluded)
        items = [self._recommended(c.item_id, c.score, c.interest) for c in picked]
        return Recommendations(uid, items, False, chosen)

    def similar(self, item_id: str, k: int, *, category: str | None = None) -> list[Recommended]:
        """The ``k`` items nearest to a live item (itself excluded). KeyError if unknown."""
        self._check_k(k)
        vector = self.index.vector(item_id) if item_id in self.catalog else None
        if vector is None:
            raise KeyError(item_id)
        keep = self._keep(category)

        def live(i: str) -> bool:
            return i in self.catalog and (keep is None or keep(i))

        hits = self.index.knn_pairs(vector[None, :], k, exclude={item_id}, filter=live)[0]
        return [self._recommended(h[0], h[1], None) for h in hits]

    def popular(
        self, k: int, *, category: str | None = None, now_ms: int | None = None
    ) -> list[Recommended]:
        keep = self._keep(category)
        return self._popular(k, frozenset(), keep, now_ms)

    # -- read-model hooks ------------------------------------------------------------------
    def items_changed(self, vectors: np.ndarray, *, bulk: bool = False) -> None:
        """Call after upserting these (unit) vectors into the index."""
        if bulk:
            self.cache.clear()
        else:
            self.cache.invalidate_near(vectors)

    def items_deleted(self, item_ids: Collection[str]) -> None:
        """Call after deleting items from the index and catalog."""
        self.cache.invalidate(item_ids)
        for item_id in item_ids:
            self.popularity.forget(item_id)

    # -- internals -------------------------------------------------------------------------
    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.config.max_k:
            raise ValueError(f"k must be between 1 and {self.config.max_k}, got {k}")

    def _keep(self, category: str | None) -> Callable[[str], bool] | None:
        if category is None:
            return None
        catalog = self.catalog

        def keep(item_id: str) -> bool:
            info = catalog.get(item_id)
            return info is not None and info.category == category

        return keep

    def _choose(
        self, profile: UserProfile, sample: bool, rng: np.random.Generator | None
    ) -> list[InterestView]:
        """The interests to search (those whose medoid is no longer live are skipped)."""
        n = self.config.interests
        usable = []
        catalog, index = self.catalog, self.index
        for interest in profile.interests:
            if interest.medoid in catalog and interest.medoid in index:
                usable.append(interest)
                if len(usable) == n and not sample:
                    break  # the top n
        if not sample or len(usable) <= n:
            return usable[:n]
        rng = rng or np.random.default_rng()
        w = np.array([max(i.importance, 0.0) for i in usable]) + 1e-12
        picks = rng.choice(len(usable), size=n, replace=False, p=w / w.sum())
        return [usable[p] for p in sorted(picks.tolist())]  # keep importance order

    def _neighbors(self, medoids: Sequence[str]) -> list[Hits]:
        """Each medoid's nearest items (itself excluded), from the cache or one batched search
        over the medoids it lacks (their vectors are read only then)."""
        depth = self.config.candidates_per_interest
        out: list[Hits | None] = [self.cache.get(m, depth) for m in medoids]
        missing = []
        vectors = []
        for n, lst in enumerate(out):
            if lst is None:
                vec = self.index.vector(medoids[n])
                if vec is None:  # deleted since _choose looked
                    out[n] = ()
                else:
                    missing.append(n)
                    vectors.append(vec)
        if missing:
            epoch = self.cache.epoch
            matrix = np.stack(vectors)
            rows = self.index.knn_pairs(matrix, depth + 1)
            for pos, (n, row) in enumerate(zip(missing, rows, strict=True)):
                # The medoid itself is the user's own item: never a candidate.
                medoid = medoids[n]
                hits = tuple([h for h in row if h[0] != medoid][:depth])
                self.cache.put(medoid, matrix[pos], hits, depth, epoch)
                out[n] = hits
        return [lst or () for lst in out]

    def _cold_start(
        self,
        user_id: str,
        k: int,
        seen: frozenset[str],
        keep: Callable[[str], bool] | None,
        now_ms: int | None,
        reason: str,
    ) -> Recommendations:
        return Recommendations(
            user_id, self._popular(k, seen, keep, now_ms), True, [], reason=reason
        )

    def _popular(
        self,
        k: int,
        seen: frozenset[str],
        keep: Callable[[str], bool] | None,
        now_ms: int | None,
    ) -> list[Recommended]:
        catalog = self.catalog

        def live(item_id: str) -> bool:
            return item_id in catalog and (keep is None or keep(item_id))

        now = int(time.time() * 1000) if now_ms is None else now_ms
        top = self.popularity.top(k, now, exclude=seen, keep=live)
        return [self._recommended(i, s, None) for i, s in top]

    def _recommended(self, item_id: str, score: float, interest: int | None) -> Recommended:
        info = self.catalog.get(item_id)
        if info is None:
            return Recommended(item_id, score, interest)
        return Recommended(item_id, score, interest, info.title, info.category)


class _Excluded:
    """Container for ``blend``'s exclude: seen by the user, or not (any longer) in the catalog."""

    __slots__ = ("catalog", "seen")

    def __init__(self, seen: Collection[str], catalog: Mapping[str, ItemInfo]) -> None:
        self.seen = seen
        self.catalog = catalog

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.seen or item_id not in self.catalog

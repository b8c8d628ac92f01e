"""Per-user interest clusters: streaming PinnerSage as a pure numpy engine (no I/O).

A user is a handful of clusters of the items they engaged with. Each cluster is represented by
its **medoid** (a real item: the member nearest the centroid, which for squared Euclidean
distance is the member minimizing the sum of squared distances to the others) and ranked by
**importance** = sum of weight * exp(-lambda * age_days) over its actions.

Per event (``learn_one``) the new action joins the cluster with the smallest Ward merge cost
``n / (n + 1) * ||x - centroid||^2`` when that cost is below ``merge_threshold``, else starts a
new cluster; past ``max_clusters`` the cheapest pair (Ward ``na nb / (na + nb) ||ca - cb||^2``)
is merged; actions older than the window or beyond ``max_actions`` are evicted. Every
``recluster_every`` applied events (and at 16, 32, 64, ... events while the user is young) a full
Ward clustering (scipy) cut at the same cost replaces the incremental one, which corrects the
drift of greedy assignment.

Everything that decides the state is made independent of memory layout (clusters keep
creation order, actions keep arrival order, ties break on ids), so a state rebuilt from
``to_bytes`` evolves exactly like the one that never left memory: a worker that restarts from
its table gives the same answer as an uninterrupted run.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Sequence

import numpy as np

from streams.interests import state_format
from streams.interests.config import DAY_MS, EngagementLike, InterestConfig
from streams.interests.interest import Interest, KeptActions, Summary
from streams.interests.kernels import (
    c_einsum,
    medoid_of,
    one_blas_thread,
    row_sq,
    unit,
    ward_labels_no_limit,
)
from streams.interests.state_format import StateFormatError

_NO_TS = np.iinfo(np.int64).max
_TS_MIN = int(np.iinfo(np.int64).min)
_ONE = np.ones(1, dtype=np.int64)

Lookup = Callable[[Sequence[str]], tuple[list[str], np.ndarray]]
"""``lookup(item_ids) -> (found_ids, vectors)``: embeddings of the items still known."""


class InterestClusters:
    """The interests of one user, updated one engagement at a time."""

    def __init__(self, config: InterestConfig | None = None) -> None:
        self.config = config or InterestConfig()
        self._dim = 0
        self._reset()

    # -- state ----------------------------------------------------------------------------
    def _reset(self) -> None:
        cap = min(16, self.config.max_actions + 1)
        # Action slots: a slot is free when its ts is _NO_TS. Order of actions = their seq.
        self._items: list[str | None] = [None] * cap
        self._ts = np.full(cap, _NO_TS, dtype=np.int64)
        self._seq = np.zeros(cap, dtype=np.int64)
        self._w = np.zeros(cap, dtype=np.float32)
        self._cl = np.full(cap, -1, dtype=np.int32)
        self._vec: np.ndarray | None = (
            None if self._dim == 0 else np.zeros((cap, self._dim), np.float32)
        )
        self._free: list[int] = list(range(cap - 1, -1, -1))
        # Live slots (slot order, arrival order), cached until an action comes or goes.
        self._live: tuple[np.ndarray, np.ndarray] | None = None
        # (the live pair they were made from, item ids in arrival order): see _live_item_ids.
        self._item_ids: tuple[tuple[np.ndarray, np.ndarray], list[str]] | None = None
        # (the live pair it was made from, item ids joined): see _live_items.
        self._items_bytes: tuple[tuple[np.ndarray, np.ndarray], bytes] | None = None
        # (the live pair and counts array they were made from, bytes): see _actions_bytes.
        self._actions_blob: tuple[tuple[np.ndarray, np.ndarray], np.ndarray, bytes] | None = None
        # The newest arrival's ts while the live actions' ts never fall in arrival order (then
        # newest first is reverse arrival, no sort); None once one came out of order.
        self._ts_high: int | None = _TS_MIN
        # (ts, seq, slot) of every action, a min-heap: the next eviction is at the top. Entries
        # of slots freed otherwise (deletes) go stale and are dropped when they surface.
        self._order: list[tuple[int, int, int]] = []
        self._n = 0
        self._next_seq = 0
        # Clusters in creation order: float32 member sums (stored as-is, so a reload is exact).
        self._sums = np.zeros((0, self._dim), dtype=np.float32)
        self._counts = np.zeros(0, dtype=np.int64)
        # Centroids (sums / counts) cached for the per-event cost; None = all stale.
        self._cents: np.ndarray | None = None
        self._cent_sq = np.zeros(0, dtype=np.float32)
        # The Ward factors counts / (counts + 1.0), float64, kept like the centroids.
        self._ward = np.zeros(0, dtype=np.float64)
        self._dirty: set[int] = set()
        self._medoid_cache: dict[int, str] = {}
        self._item_counts: Counter[str] = Counter()
        self._event_ids: deque[str] = deque()
        self._event_set: set[str] = set()
        self._applied = 0
        self._max_ts = 0
        self._last_event_id: str | None = None

    def _grow(self) -> None:
        """Double the action slots (up to max_actions + 1): small users stay small in memory."""
        old = len(self._ts)
        cap = min(max(2 * old, 16), self.config.max_actions + 1)
        if cap <= old:
            raise RuntimeError("no free action slot")  # eviction keeps one free; a bug if not
        extra = cap - old
        self._items.extend([None] * extra)
        self._ts = np.concatenate([self._ts, np.full(extra, _NO_TS, dtype=np.int64)])
        self._seq = np.concatenate([self._seq, np.zeros(extra, dtype=np.int64)])
        self._w = np.concatenate([self._w, np.zeros(extra, dtype=np.float32)])
        self._cl = np.concatenate([self._cl, np.full(extra, -1, dtype=np.int32)])
        if self._vec is not None:
            self._vec = np.vstack([self._vec, np.zeros((extra, self._dim), np.float32)])
        self._free.extend(range(cap - 1, old - 1, -1))

    def _ensure_dim(self, dim: int) -> None:
        if self._dim == dim:
            return
        if self._dim != 0:
            raise ValueError(f"embedding has dim {dim}, this user's state has dim {self._dim}")
        self._dim = dim
        self._vec = np.zeros((len(self._ts), dim), dtype=np.float32)
        self._sums = np.zeros((0, dim), dtype=np.float32)
        self._cents = None

    @property
    def n_actions(self) -> int:
        return self._n

    @property
    def n_clusters(self) -> int:
        return len(self._counts)

    @property
    def last_ts(self) -> int:
        """Newest event time applied (ms), 0 for an empty state."""
        return self._max_ts

    @property
    def last_event_id(self) -> str | None:
        return self._last_event_id

    @property
    def seen_items(self) -> frozenset[str]:
        return frozenset(self._item_counts)

    def seen_among(self, item_ids: set[str]) -> set[str]:
        """Those of ``item_ids`` this state holds actions on (walks the smaller of the two)."""
        return self._item_counts.keys() & item_ids

    def remembers(self, event_id: str) -> bool:
        return event_id in self._event_set

    # -- learning -------------------------------------------------------------------------
    def learn_one(self, event: EngagementLike, embedding: np.ndarray) -> bool:
        """Apply one engagement; False when it changed nothing (duplicate or expired)."""
        eid = event.event_id
        if eid in self._event_set:
            return False
        # Validate before remembering the id: a rejected event must stay retryable.
        x = unit(embedding)
        if self._dim and x.shape[0] != self._dim:
            raise ValueError(
                f"embedding has dim {x.shape[0]}, this user's state has dim {self._dim}"
            )
        self._remember(eid)
        self._last_event_id = eid
        ts = int(event.ts)
        window = self.config.window_days * DAY_MS
        newest = max(self._max_ts, ts)
        if ts < newest - window:
            return False  # already outside the window: it would be evicted at once
        self._ensure_dim(x.shape[0])
        self._max_ts = newest
        self._applied += 1
        self._add(event.item_id, ts, self.config.weight_of(event.action, event.weight), x)
        self._evict(newest - window)
        if len(self._counts) > self.config.max_clusters:
            self._merge_cheapest_pair()
        if self._recluster_due():
            self.recluster()
        return True

    def _recluster_due(self) -> bool:
        """Every ``recluster_every`` events; a young user also at 16, 32, 64, ... events.

        Greedy assignment errs most while a user is young (a new interest's first actions join
        an older cluster that is still small and loose); those reclusters are cheap (few
        actions) and make the clusters right early, at four or so extra reclusters per user.
        """
        every, n = self.config.recluster_every, self._applied
        if not every:
            return False
        return n % every == 0 or (16 <= n < every and n & (n - 1) == 0)

    def _remember(self, event_id: str) -> None:
        cap = self.config.remembered_event_ids
        if cap == 0:
            return
        self._event_ids.append(event_id)
        self._event_set.add(event_id)
        while len(self._event_ids) > cap:
            self._event_set.discard(self._event_ids.popleft())

    def _add(self, item_id: str, ts: int, weight: float, x: np.ndarray) -> None:
        if not self._free:
            self._grow()
        assert self._vec is not None
        # A repeat of a kept item adds importance, not geometry: same cluster, same vector.
        repeat_of = self._items.index(item_id) if item_id in self._item_counts else -1
        slot = self._free.pop()
        self._live = None
        if self._ts_high is not None:
            self._ts_high = ts if ts >= self._ts_high else None
        self._items[slot] = item_id
        self._ts[slot] = ts
        self._seq[slot] = self._next_seq
        heapq.heappush(self._order, (ts, self._next_seq, slot))
        self._next_seq += 1
        self._w[slot] = weight
        self._n += 1
        self._item_counts[item_id] += 1
        if repeat_of >= 0:
            self._vec[slot] = self._vec[repeat_of]
            self._cl[slot] = self._cl[repeat_of]
            return
        self._vec[slot] = x
        counts = self._counts
        if len(counts):
            # Ward cost of joining cluster j: n/(n+1) ||c_j - x||^2, expanded (x is a unit vector).
            dots = self._centroids() @ x
            d2 = self._cent_sq - (dots + dots) + 1.0  # dots + dots: 2.0 * dots, exactly
            cost = self._ward * d2
            j = int(cost.argmin())
            if cost[j] < self.config.merge_threshold:
                self._sums[j] += x
                self._counts[j] += 1
                self._dirty.add(j)
                self._cl[slot] = j
                self._medoid_cache.pop(j, None)
                return
        # What vstack and append do, without their wrappers.
        self._sums = np.concatenate((self._sums, x[None, :]))
        self._counts = np.concatenate((self._counts, _ONE))
        self._cents = None
        self._cl[slot] = len(self._counts) - 1

    def _centroids(self) -> np.ndarray:
        """sums / counts (and their squared norms in ``_cent_sq``, the Ward factors in
        ``_ward``), recomputing only the clusters changed since the last call. Row by row and
        all at once give the same bits, so a reloaded state decides exactly like the one that
        never left memory."""
        if self._cents is None:
            self._cents = self._sums / self._counts[:, None].astype(np.float32)
            self._cent_sq = row_sq(self._cents)
            self._ward = self._counts / (self._counts + 1.0)
        else:
            cents, sums, counts, sq = self._cents, self._sums, self._counts, self._cent_sq
            for j in self._dirty:  # one or two rows a event: cheaper than fancy indexing
                np.divide(sums[j], np.float32(counts[j]), out=cents[j])
                sq[j : j + 1] = row_sq(cents[j : j + 1])
                # Python's int / float is numpy's: the count widened to a double, one division.
                n = int(counts[j])
                self._ward[j] = n / (n + 1.0)
        self._dirty.clear()
        return self._cents

    def _evict(self, oldest_allowed: float) -> None:
        order = self._order
        while self._n:
            # Oldest action by (ts, arrival).
            ts, seq, slot = order[0]
            if self._ts[slot] != ts or self._seq[slot] != seq:
                heapq.heappop(order)  # stale: that slot was freed (and maybe reused) since
                continue
            if self._n <= self.config.max_actions and ts >= oldest_allowed:
                return
            heapq.heappop(order)
            self._remove_slots([slot])

    def _free_slots(self, slots: Sequence[int]) -> None:
        """Empty the slots and make them free; the caller has taken their actions out of the
        item counts and the clusters."""
        for slot in slots:
            self._items[slot] = None
            self._ts[slot] = _NO_TS
            self._cl[slot] = -1
        self._free.extend(slots)
        self._n -= len(slots)
        self._live = None

    def _remove_slots(self, slots: Sequence[int]) -> None:
        assert self._vec is not None
        touched: set[int] = set()
        for slot in slots:
            j = int(self._cl[slot])
            item = self._items[slot]
            assert item is not None
            self._item_counts[item] -= 1
            if self._item_counts[item] == 0:
                # The item's last action: it leaves the cluster's geometry.
                del self._item_counts[item]
                self._sums[j] -= self._vec[slot]
                self._counts[j] -= 1
                touched.add(j)
                self._dirty.add(j)
        self._free_slots(slots)
        if not self._n:
            self._ts_high = _TS_MIN
        for j in touched:
            self._medoid_cache.pop(j, None)
        empty = [j for j in sorted(touched) if self._counts[j] == 0]
        if empty:
            self._drop_clusters(empty)

    def _drop_clusters(self, positions: list[int]) -> None:
        keep = np.ones(len(self._counts), dtype=bool)
        keep[positions] = False
        remap = np.cumsum(keep) - 1
        live = self._cl >= 0
        self._cl[live] = remap[self._cl[live]]
        self._sums = self._sums[keep]
        self._counts = self._counts[keep]
        self._cents = None
        self._medoid_cache = {int(remap[j]): m for j, m in self._medoid_cache.items() if keep[j]}

    def _merge_cheapest_pair(self) -> None:
        counts = self._counts.astype(np.float64)
        cents = (self._sums / self._counts[:, None].astype(np.float32)).astype(np.float64)
        sq = c_einsum("ij,ij->i", cents, cents)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * cents @ cents.T, 0.0)
        cost = counts[:, None] * counts[None, :] / (counts[:, None] + counts[None, :]) * d2
        cost[np.diag_indices_from(cost)] = np.inf
        flat = int(np.argmin(cost))  # row-major: the lowest (a, b) pair wins ties
        a, b = sorted(divmod(flat, len(counts)))
        self._sums[a] += self._sums[b]
        self._counts[a] += self._counts[b]
        self._cl[self._cl == b] = a
        self._counts[b] = 0
        self._medoid_cache.pop(a, None)
        self._drop_clusters([b])

    # -- full recluster -------------------------------------------------------------------
    def _live_slots(self) -> np.ndarray:
        """Live action slots in arrival order (read-only, cached)."""
        return self._live_pair()[1]

    def _live_in_slot_order(self) -> np.ndarray:
        """Live action slots in slot order (read-only, cached): what ``self._ts != _NO_TS``
        selects, in the same order."""
        return self._live_pair()[0]

    def _live_pair(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._live
        if live is None:
            by_slot = (self._ts != _NO_TS).nonzero()[0]  # np.flatnonzero without its wrapper
            by_arrival = by_slot[self._seq[by_slot].argsort(kind="stable")]
            by_slot.flags.writeable = False
            by_arrival.flags.writeable = False
            live = self._live = (by_slot, by_arrival)
        return live

    def _live_item_ids(self) -> list[str]:
        """The live actions' item ids in arrival order (cached with the live slots, read-only:
        serialization and the recent members both need them)."""
        live = self._live_pair()
        cached = self._item_ids
        if cached is None or cached[0] is not live:
            items = self._items
            cached = self._item_ids = (live, [items[s] or "" for s in live[1].tolist()])
        return cached[1]

    def _live_items(self) -> bytes:
        """The live actions' item ids in arrival order, as ``to_bytes`` writes them (cached
        with the live slots: a full state and its view both need them)."""
        live = self._live_pair()
        cached = self._items_bytes
        if cached is None or cached[0] is not live:
            ids = state_format.encode_item_ids(self._live_item_ids())
            cached = self._items_bytes = (live, ids)
        return cached[1]

    def _check_ts_order(self) -> None:
        """Sets ``_ts_high`` from the live actions (after a reload, or to notice that the
        actions that came out of order have left)."""
        ts = self._ts[self._live_slots()]
        if not len(ts):
            self._ts_high = _TS_MIN
        elif bool((ts[1:] >= ts[:-1]).all()):
            self._ts_high = int(ts[-1])
        else:
            self._ts_high = None

    def recluster(self) -> None:
        """Full Ward agglomerative clustering of the kept actions, cut at ``merge_threshold``.

        scipy's Ward height is sqrt(2 * merge cost), so the cut is at sqrt(2 * threshold); when
        that leaves more than ``max_clusters`` clusters the tree is cut into ``max_clusters``.
        """
        if self._n == 0:
            return
        assert self._vec is not None
        if self._ts_high is None:
            self._check_ts_order()  # rare enough here to look again
        slots = self._live_slots()
        items = self._live_item_ids()
        first_slot: dict[str, int] = {}
        for s, item in zip(slots.tolist(), items, strict=True):
            first_slot.setdefault(item, s)
        distinct = np.fromiter(first_slot.values(), dtype=np.int64, count=len(first_slot))
        vectors = self._vec[distinct]
        # One BLAS limit for both products (entering one costs ~15 us, leaving as much).
        with one_blas_thread():
            labels = ward_labels_no_limit(
                vectors, self.config.merge_threshold, self.config.max_clusters
            )
            # Number clusters by their first action so the order is canonical.
            rank: dict[int, int] = {}
            assign = np.array([rank.setdefault(label, len(rank)) for label in labels.tolist()])
            k = len(rank)
            onehot = np.zeros((k, len(assign)), dtype=np.float32)
            onehot[assign, np.arange(len(assign))] = 1.0
            sums = onehot @ vectors
        label_of = dict(zip(first_slot, assign.tolist(), strict=True))
        self._cl[slots] = [label_of[item] for item in items]
        self._sums = sums
        self._counts = np.bincount(assign, minlength=k).astype(np.int64)
        self._cents = None
        self._medoid_cache = {}

    # -- deletion -------------------------------------------------------------------------
    def forget_item(self, item_id: str) -> bool:
        """Remove every action on ``item_id`` (the item was deleted); True if any."""
        if item_id not in self._item_counts:
            return False
        slots = [i for i, it in enumerate(self._items) if it == item_id]
        self._remove_slots(slots)
        return True

    def forget(self) -> None:
        """Empty the state (the user was deleted)."""
        self._dim = 0
        self._reset()

    # -- queries --------------------------------------------------------------------------
    def _importances(self, now_ms: int, cl: np.ndarray | None = None) -> np.ndarray:
        """``cl``: the live actions' clusters in slot order, when the caller has them."""
        live = self._live_in_slot_order()
        age_days = np.maximum(now_ms - self._ts[live], 0) / DAY_MS
        # float32 weights times float64 decays: numpy widens them (exactly) in the multiply.
        contrib = self._w[live] * np.exp(-self.config.decay_per_day * age_days)
        if cl is None:
            cl = self._cl[live]
        return np.bincount(cl, weights=contrib, minlength=len(self._counts))

    def importances(self, now_ms: int) -> np.ndarray:
        """Importance of every cluster (creation order) at ``now_ms``."""
        return self._importances(now_ms)

    def _medoid_id(self, j: int, members: np.ndarray | None = None) -> str:
        """Item id of cluster ``j``'s medoid (cached until the cluster changes); ``members``
        are its live slots, found here when not given and needed."""
        medoid = self._medoid_cache.get(j)
        if medoid is None:
            assert self._vec is not None
            if members is None:
                slots = self._live_slots()
                members = slots[self._cl[slots] == j]
            items = self._items
            ids = [items[s] or "" for s in members.tolist()]
            distinct = members
            if len(set(ids)) < len(ids):  # repeats: each item once, at its first action
                first: dict[str, int] = {}
                for s, item in zip(members.tolist(), ids, strict=True):
                    first.setdefault(item, s)
                ids = list(first)
                distinct = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            # One distinct item (a new interest) is its own medoid.
            medoid = ids[0] if len(ids) == 1 else ids[medoid_of(self._vec[distinct], ids)]
            self._medoid_cache[j] = medoid
        return medoid

    def _medoid_slot(self, j: int, members: np.ndarray) -> int:
        return self._items.index(self._medoid_id(j, members))

    def _recent_items(
        self, clusters: Sequence[int], limit: int | None = None
    ) -> dict[int, tuple[str, ...]]:
        """Each cluster's distinct items, newest action first, at most ``limit``: one pass
        over all actions, newest first (not a sort per cluster)."""
        arrival = self._live_slots()
        if self._ts_high is not None:  # ts never fall in arrival order: newest is last
            newest = arrival[::-1]
            ids = self._live_item_ids()[::-1]
        else:  # by ts, newest first; ts ties keep reverse arrival (the later action first)
            backwards = arrival[::-1]
            newest = backwards[(-self._ts[backwards]).argsort(kind="stable")]
            items = self._items
            ids = [items[s] or "" for s in newest.tolist()]
        recent: dict[int, dict[str, None]] = {j: {} for j in clusters}
        unfilled = len(recent)
        for item, j in zip(ids, self._cl[newest].tolist(), strict=True):
            got = recent.get(j)
            if got is None or len(got) == limit:
                continue
            got[item] = None
            if len(got) == limit:
                unfilled -= 1
                if not unfilled:
                    break
        return {j: tuple(got) for j, got in recent.items()}

    def _interest(
        self, j: int, importance: float, members: np.ndarray, recent: tuple[str, ...]
    ) -> Interest:
        assert self._vec is not None
        slot = self._medoid_slot(j, members)
        medoid = self._items[slot]
        assert medoid is not None
        return Interest(
            medoid=medoid,
            importance=float(importance),
            size=len(members),
            members=recent,
            last_ts=int(self._ts[members].max()),
            centroid=(self._sums[j] / np.float32(self._counts[j])).copy(),
            medoid_vector=self._vec[slot].copy(),
        )

    def _interests(self, clusters: Sequence[int], imp: np.ndarray) -> list[Interest]:
        members = self._members_by_cluster()
        recent = self._recent_items(clusters)
        return [self._interest(j, imp[j], members[j], recent[j]) for j in clusters]

    def _members_by_cluster(self) -> list[np.ndarray]:
        slots = self._live_slots()
        cl = self._cl[slots]
        return [slots[cl == j] for j in range(len(self._counts))]

    def interests(self, now_ms: int) -> list[Interest]:
        """All clusters, most important first (ties: older cluster first)."""
        if self._n == 0:
            return []
        imp = self._importances(now_ms)
        return self._interests(np.argsort(-imp, kind="stable").tolist(), imp)

    def top_medoids(self, k: int, now_ms: int) -> list[Interest]:
        """The ``k`` most important interests."""
        if k <= 0 or self._n == 0:
            return []
        imp = self._importances(now_ms)
        return self._interests(np.argsort(-imp, kind="stable")[:k].tolist(), imp)

    def published(self, k: int, now_ms: int, members: int = 5) -> tuple[list[Summary], KeptActions]:
        """What a ``user-interests`` record says of this state: what ``top_medoids`` says of
        the ``k`` most important interests, without vectors (medoid, importance, size and the
        ``members`` most recent distinct items; the worker publishes this for every change, so
        it skips the copies and per-cluster member arrays; medoids come from the cache when
        unchanged), and every kept action, whose ``interest`` is its cluster's position in
        those summaries (-1 when the cluster is not among the ``k`` most important)."""
        if self._n == 0:
            return [], KeptActions((), np.zeros(0, np.int64), np.zeros(0, np.int64))
        order, imps, sizes = self._ranked(now_ms)
        top = order[: max(k, 0)]
        position = np.full(len(self._counts), -1, dtype=np.int64)
        position[top] = np.arange(len(top))
        slots = self._live_slots()
        actions = KeptActions(
            tuple(self._live_item_ids()), self._ts[slots], position[self._cl[slots]]
        )
        return self._summaries(top, imps, sizes, members), actions

    def _ranked(self, now_ms: int) -> tuple[list[int], list[float], list[int]]:
        """Every cluster, most important first; and each cluster's importance and size."""
        cl = self._cl[self._live_in_slot_order()]
        imp = self._importances(now_ms, cl)
        # Array methods, not np.argsort's wrapper; tolist's floats are float(imp[j])'s.
        order = (-imp).argsort(kind="stable").tolist()
        sizes = np.bincount(cl, minlength=len(self._counts)).tolist()
        return order, imp.tolist(), sizes

    def _summaries(
        self, clusters: list[int], imps: list[float], sizes: list[int], members: int
    ) -> list[Summary]:
        recent = self._recent_items(clusters, members)
        cache = self._medoid_cache
        return [
            (cache.get(j) or self._medoid_id(j), imps[j], sizes[j], recent[j]) for j in clusters
        ]

    def sample_medoids(self, k: int, now_ms: int, rng: np.random.Generator) -> list[Interest]:
        """``k`` interests drawn without replacement, proportionally to importance."""
        if k <= 0 or self._n == 0:
            return []
        imp = self._importances(now_ms)
        n = len(imp)
        total = float(imp.sum())
        p = imp / total if total > 0 and np.isfinite(total) else np.full(n, 1.0 / n)
        nonzero = int(np.count_nonzero(p))
        if nonzero < min(k, n):  # rng.choice needs enough non-zero weights
            p = (p + 1e-12) / (p + 1e-12).sum()
        picks = rng.choice(n, size=min(k, n), replace=False, p=p)
        picks = picks[np.argsort(-imp[picks], kind="stable")]
        return self._interests(picks.tolist(), imp)

    def assignments(self) -> tuple[list[str], np.ndarray]:
        """Item id and cluster index of every kept action, in arrival order."""
        slots = self._live_slots()
        return [self._items[s] or "" for s in slots], self._cl[slots].copy()

    def action_times(self) -> np.ndarray:
        return self._ts[self._live_slots()].copy()

    # -- serialization --------------------------------------------------------------------
    # state_format owns the byte layout; these methods only map slots to and from its fields.
    def to_bytes(self, *, view: bool = False) -> bytes:
        """Compact versioned bytes: ids, times, weights, assignments, cluster sums, event ids.

        Member embeddings are not included: they live once per item in the item store and
        come back through ``from_bytes``'s lookup. A ``view`` leaves out the cluster sums and
        the remembered event ids (most of the bytes): it answers every query the same, and
        ``from_bytes`` rebuilds the sums from the members, exactly up to float rounding. The
        worker's own table keeps full states, which evolve bit for bit alike after a reload.
        """
        return state_format.encode(
            view=view,
            dim=self._dim,
            n_actions=self._n,
            n_clusters=len(self._counts),
            applied=self._applied,
            max_ts=self._max_ts,
            last_event_id=self._last_event_id,
            item_ids=self._live_items(),
            event_ids=self._event_ids,
            actions=self._actions_bytes(),
            sums=self._sums,
        )

    def _actions_bytes(self) -> bytes:
        """The live actions' times, weights and clusters (arrival order) and the cluster counts,
        as ``to_bytes`` writes them: a state and its view share them, so they are made once.
        Cached with the live slots and the counts array: whatever changes them replaces one
        of the two (an action comes or goes; a renumbering of clusters makes new counts)."""
        live, counts = self._live_pair(), self._counts
        cached = self._actions_blob
        if cached is None or cached[0] is not live or cached[1] is not counts:
            slots = live[1]
            blob = state_format.encode_actions(
                self._ts[slots], self._w[slots], self._cl[slots], counts
            )
            cached = self._actions_blob = (live, counts, blob)
        return cached[2]

    @staticmethod
    def items_in(blob: bytes) -> frozenset[str]:
        """The item ids a ``to_bytes`` state (or view) holds, without rebuilding it (cheap).

        Raises ``StateFormatError`` on a blob that is not a state of this format version.
        """
        return state_format.items_in(blob)

    @classmethod
    def from_bytes(
        cls, blob: bytes, lookup: Lookup, config: InterestConfig | None = None
    ) -> InterestClusters:
        """Rebuild a state from ``to_bytes``; actions on items ``lookup`` lacks are dropped."""
        decoded = state_format.decode(blob)
        items, ts, w, cl = decoded.item_ids, decoded.ts, decoded.weights, decoded.clusters
        n, k, dim = len(items), len(decoded.counts), decoded.dim
        state = cls(config)
        if n > state.config.max_actions:
            raise StateFormatError(
                f"state holds {n} actions, more than max_actions={state.config.max_actions}"
            )
        state._dim = dim
        state._reset()
        state._applied = int(decoded.applied)
        state._max_ts = int(decoded.max_ts)
        state._last_event_id = decoded.last_event_id
        for eid in decoded.event_ids:
            state._remember(eid)
        if decoded.sums is None:  # a view
            state._sums = np.zeros((k, dim), dtype=np.float32)  # rebuilt from the members below
        else:
            state._sums = decoded.sums.copy()
        state._counts = decoded.counts.copy()
        if n == 0:
            return state
        found_ids, matrix = lookup(sorted(set(items)))
        vectors = {i: np.asarray(matrix[r]) for r, i in enumerate(found_ids)}
        missing: list[int] = []
        for pos, item in enumerate(items):
            if not state._free:
                state._grow()
            assert state._vec is not None
            slot = state._free.pop()
            state._items[slot] = item
            state._ts[slot] = ts[pos]
            state._seq[slot] = pos
            state._w[slot] = w[pos]
            state._cl[slot] = cl[pos]
            state._item_counts[item] += 1
            state._n += 1
            vec = vectors.get(item)
            if vec is None:
                missing.append(slot)
            else:
                state._vec[slot] = unit(vec)
        state._next_seq = n
        state._live = None
        state._order = [(int(state._ts[s]), int(state._seq[s]), s) for s in state._live_slots()]
        heapq.heapify(state._order)
        state._check_ts_order()
        if missing or decoded.view:
            # A gone item: drop its actions and rebuild the affected cluster sums exactly (a
            # view: rebuild them all).
            touched = set(range(k)) if decoded.view else {int(state._cl[s]) for s in missing}
            state._remove_slots_without_vectors(missing, touched)
        return state

    def _remove_slots_without_vectors(self, slots: list[int], touched: set[int]) -> None:
        assert self._vec is not None
        for slot in slots:
            item = self._items[slot]
            assert item is not None
            self._item_counts[item] -= 1
            if self._item_counts[item] == 0:
                del self._item_counts[item]
        self._free_slots(slots)
        live = self._live_slots()
        for j in touched:
            first: dict[str, int] = {}
            for s in live[self._cl[live] == j].tolist():
                first.setdefault(self._items[s] or "", s)
            members = list(first.values())
            self._counts[j] = len(members)
            self._sums[j] = self._vec[members].sum(axis=0, dtype=np.float32) if members else 0
        self._cents = None
        empty = [j for j in sorted(touched) if self._counts[j] == 0]
        if empty:
            self._drop_clusters(empty)

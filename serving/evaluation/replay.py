"""Offline quality of recommendations: a chronological replay with a global time split.

Protocol (``evaluate``): events are replayed in timestamp order. The first ``split`` of the time
range warms the methods up; in the rest, every positive engagement is a test event: **before**
the event is applied, each method ranks the whole catalogue for that user from its current
state (items the user already engaged with are excluded), the rank of the engaged item is
recorded, and only then is the event applied to every method. Events whose user had fewer than
``min_history`` earlier positive engagements are applied but not scored (cold start is the same
popularity list for every method, so it would only dilute the comparison).

Methods (same catalogue, same embeddings, same exclusions):

- ``popularity``: time-decayed count of positive engagements (lambda = ``decay_per_day``);
- ``last_item``: nearest items to the user's last positively engaged item;
- ``mean_embedding``: nearest items to the time-decayed weighted mean of the user's history;
- ``pinnersage*``: the interests engine (``streams.interests``); each query takes the top (or
  importance-sampled) medoids, searches around each, and blends the lists with
  ``serving.blend.blend``, exactly as the live API does.

Scoring is vectorized: queries are collected while replaying and scored a chunk at a time with
one matrix product per method (exact search; the catalogue is small). A method with no state
for a user (e.g. all its actions expired) falls back to the popularity list, and that is
counted. Metrics (``metrics``) come with user-level bootstrap 95% intervals.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.blend import blend
from streams.interests import DAY_MS, InterestClusters, InterestConfig, unit
from streams.schemas import Engagement, Item

log = logging.getLogger(__name__)

# The engine configuration the evaluation uses unless told otherwise: the library defaults,
# except that nothing expires (MovieLens ratings span seven months).
EVAL_ENGINE_CONFIG = InterestConfig(window_days=3650.0)


# -- data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayData:
    """A catalogue with unit embeddings and an engagement log in timestamp order.

    ``positive[i]`` says whether event ``i`` is a positive engagement; ``weight[i]`` is what it
    weighs when it is (1.0 unless weighting by rating/action).
    """

    name: str
    item_ids: list[str]
    vectors: np.ndarray
    events: list[Engagement]
    positive: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.events)
        if self.vectors.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.vectors.shape[0]} vectors for {len(self.item_ids)} items")
        if len(self.positive) != n or len(self.weight) != n:
            raise ValueError("positive and weight need one entry per event")
        ts = [e.ts for e in self.events]
        if any(b < a for a, b in itertools.pairwise(ts)):
            raise ValueError("events must be in timestamp order")

    def with_vectors(self, vectors: np.ndarray) -> ReplayData:
        """The same log over other embeddings of the same items (normalized here)."""
        v = np.asarray(vectors, dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return ReplayData(self.name, self.item_ids, v, self.events, self.positive, self.weight)

    def only_users(self, users: set[str]) -> ReplayData:
        keep = [i for i, e in enumerate(self.events) if e.user_id in users]
        return ReplayData(
            self.name,
            self.item_ids,
            self.vectors,
            [self.events[i] for i in keep],
            self.positive[keep],
            self.weight[keep],
        )


def replay_data(
    name: str,
    items: Sequence[Item],
    vectors: np.ndarray,
    events: Sequence[Engagement],
    *,
    positive_min_weight: float | None = 4.0,
    weight_by_rating: bool = False,
    action_weights: Callable[[Engagement], float] | None = None,
) -> ReplayData:
    """Build ``ReplayData``: events on unknown items are dropped; vectors are normalized.

    ``positive_min_weight``: an event is positive when its ``weight`` (the rating) is at least
    this; ``None`` makes every event positive (implicit feedback). ``weight_by_rating``: a
    positive weighs its rating (or ``action_weights(event)`` when given) instead of 1.
    """
    ids = [it.item_id for it in items]
    known = set(ids)
    kept = sorted((e for e in events if e.item_id in known), key=lambda e: e.ts)
    raw = np.array(
        [action_weights(e) if action_weights else (e.weight or 1.0) for e in kept], dtype=np.float64
    )
    if positive_min_weight is None:
        positive = np.ones(len(kept), dtype=bool)
    else:
        positive = np.array([(e.weight or 0.0) >= positive_min_weight for e in kept], dtype=bool)
    weight = raw if weight_by_rating else np.ones(len(kept))
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return ReplayData(name, ids, v, kept, positive, weight)


# -- methods --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorQuery:
    """Search around each row of ``vectors``; several rows are blended by ``importances``."""

    vectors: np.ndarray
    importances: np.ndarray
    blended: bool = False


@dataclass(frozen=True)
class ScoreQuery:
    """A score for every catalogue item (higher is better)."""

    scores: np.ndarray


Query = VectorQuery | ScoreQuery


@dataclass(frozen=True)
class Action:
    """One positive engagement as the methods see it (``item`` indexes the catalogue)."""

    event_id: str
    user_id: str
    item_id: str
    item: int
    weight: float
    ts: int
    action: str = "rate"


class ReplayMethod(Protocol):
    """A recommender replayed by ``evaluate``: one or more named rankings from one state."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def learn_one(self, action: Action) -> None: ...

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        """One query per name (``None``: no state for this user)."""
        ...


class Popularity:
    """Time-decayed popularity: sum over positives of weight * exp(-lambda * age_days)."""

    def __init__(self, n_items: int, decay_per_day: float = 0.01, name: str = "popularity"):
        self.names = (name,)
        self.decay_per_day = decay_per_day
        self._scores = np.zeros(n_items, dtype=np.float64)
        self._ref_ts: int | None = None  # scores are kept scaled to exp(lambda * (t - ref))

    def learn_one(self, action: Action) -> None:
        if self._ref_ts is None:
            self._ref_ts = action.ts
        exponent = self.decay_per_day * (action.ts - self._ref_ts) / DAY_MS
        if exponent > 30.0:  # rescale before exp() overflows; the ranking is unchanged
            self._scores *= math.exp(-exponent)
            self._ref_ts, exponent = action.ts, 0.0
        self._scores[action.item] += action.weight * math.exp(exponent)

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        return [ScoreQuery(self._scores.copy())]


class LastItem:
    """Nearest items to the user's most recent positive item."""

    def __init__(self, vectors: np.ndarray, name: str = "last_item"):
        self.names = (name,)
        self._vectors = vectors
        self._last: dict[str, int] = {}

    def learn_one(self, action: Action) -> None:
        self._last[action.user_id] = action.item

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        item = self._last.get(user_id)
        if item is None:
            return [None]
        return [VectorQuery(self._vectors[item][None, :], np.ones(1))]


class MeanEmbedding:
    """One vector per user: the time-decayed, weighted mean of their positive items.

    The decay multiplies every past action by the same factor at query time, so only the
    relative decay between actions matters: the running sum is decayed at each new action.
    """

    def __init__(
        self, vectors: np.ndarray, decay_per_day: float = 0.01, name: str = "mean_embedding"
    ):
        self.names = (name,)
        self.decay_per_day = decay_per_day
        self._vectors = vectors
        self._sum: dict[str, np.ndarray] = {}
        self._ts: dict[str, int] = {}

    def learn_one(self, action: Action) -> None:
        x = action.weight * self._vectors[action.item].astype(np.float64)
        prev = self._sum.get(action.user_id)
        if prev is None:
            self._sum[action.user_id] = x
        else:
            age = max(action.ts - self._ts[action.user_id], 0) / DAY_MS
            self._sum[action.user_id] = prev * math.exp(-self.decay_per_day * age) + x
        self._ts[action.user_id] = action.ts

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        s = self._sum.get(user_id)
        if s is None or not np.any(s):
            return [None]
        return [VectorQuery(unit(s)[None, :], np.ones(1))]


@dataclass(frozen=True)
class MedoidQuery:
    """How a PinnerSage variant queries the engine: ``n`` interests, top or sampled, and
    whether it searches around the medoid (an engaged item) or the cluster centroid."""

    name: str
    n: int = 3
    sample: bool = False
    centroid: bool = False


class PinnerSage:
    """The interests engine per user; each ``MedoidQuery`` is one named ranking of it."""

    def __init__(
        self,
        vectors: np.ndarray,
        config: InterestConfig = EVAL_ENGINE_CONFIG,
        queries: Sequence[MedoidQuery] = (MedoidQuery("pinnersage"),),
        seed: int = 0,
    ):
        if not queries:
            raise ValueError("PinnerSage needs at least one MedoidQuery")
        self.names = tuple(q.name for q in queries)
        self.config = config
        self.queries = tuple(queries)
        self._vectors = vectors
        self._users: dict[str, InterestClusters] = {}
        self._rng = np.random.default_rng(seed)

    def learn_one(self, action: Action) -> None:
        state = self._users.get(action.user_id)
        if state is None:
            state = self._users[action.user_id] = InterestClusters(self.config)
        state.learn_one(action, self._vectors[action.item])

    def state(self, user_id: str) -> InterestClusters | None:
        return self._users.get(user_id)

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        state = self._users.get(user_id)
        if state is None or state.n_actions == 0:
            return [None] * len(self.queries)
        out: list[Query | None] = []
        for q in self.queries:
            if q.sample:
                chosen = state.sample_medoids(q.n, now_ms, self._rng)
            else:
                chosen = state.top_medoids(q.n, now_ms)
            if not chosen:
                out.append(None)
                continue
            rows = [unit(i.centroid) if q.centroid else i.medoid_vector for i in chosen]
            out.append(
                VectorQuery(
                    np.stack(rows).astype(np.float32),
                    np.array([i.importance for i in chosen]),
                    blended=True,
                )
            )
        return out


class CapturedPinnerSage(PinnerSage):
    """PinnerSage answered from states computed elsewhere: ``states[event_id]`` is the user's
    serialized state (``InterestClusters.to_bytes``) right after that event, as the interests
    worker published it (``recstream eval --through-kafka``). An event without a captured
    state leaves the user's state as it was; only states before scored events matter."""

    def __init__(
        self,
        vectors: np.ndarray,
        item_ids: Sequence[str],
        states: Mapping[str, bytes],
        config: InterestConfig = EVAL_ENGINE_CONFIG,
        queries: Sequence[MedoidQuery] = (MedoidQuery("pinnersage"),),
        seed: int = 0,
    ):
        super().__init__(vectors, config, queries, seed)
        self._states = states
        self._row = {item_id: i for i, item_id in enumerate(item_ids)}

    def learn_one(self, action: Action) -> None:
        blob = self._states.get(action.event_id)
        if blob is not None:
            self._users[action.user_id] = InterestClusters.from_bytes(
                blob, self._lookup, config=self.config
            )

    def _lookup(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        found = [i for i in ids if i in self._row]
        return found, self._vectors[[self._row[i] for i in found]]


# -- protocol -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol_:
    """Replay settings. ``max_k`` is the length of every ranked list (curves go to it)."""

    split: float = 0.8
    split_ts: int | None = None  # overrides ``split`` (tests pin it when truncating the log)
    max_k: int = 50
    min_history: int = 1
    chunk: int = 512


@dataclass
class ReplayResult:
    """Per scored event: user, target item, and each method's rank of it (0 = beyond max_k)."""

    dataset: str
    n_items: int
    max_k: int
    split_ts: int
    event_ids: list[str]
    users: np.ndarray  # user index per scored event
    user_ids: list[str]
    targets: np.ndarray
    ranks: dict[str, np.ndarray]
    top: dict[str, np.ndarray]  # (events, max_k) item indices, -1 where the list is short
    fallbacks: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first (ties: lower index)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    sub = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -sub), axis=1)
    return np.take_along_axis(part, order, axis=1)


@dataclass
class _Pending:
    event: Engagement
    user: int
    target: int
    n_engaged: int
    queries: dict[str, Query | None]


def evaluate(
    data: ReplayData,
    methods: Sequence[ReplayMethod],
    protocol: Protocol_ | None = None,
    *,
    on_learn: Callable[[str, str], None] | None = None,
    on_score: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Replay ``data`` through ``methods`` and rank every test event before applying it.

    A ``Popularity`` named "popularity" must be among ``methods`` (it is the cold-start
    fallback). ``on_learn(method_name, event_id)`` / ``on_score(event_id)`` observe the order of
    state updates and scoring (the leakage test uses them).
    """
    p = protocol or Protocol_()
    names = [n for m in methods for n in m.names]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    if "popularity" not in names:
        raise ValueError("evaluate needs a 'popularity' method (the cold-start fallback)")
    if not data.events:
        raise ValueError("no events to replay")
    first, last = data.events[0].ts, data.events[-1].ts
    split_ts = p.split_ts if p.split_ts is not None else int(first + p.split * (last - first))
    index_of = {item_id: i for i, item_id in enumerate(data.item_ids)}
    user_index: dict[str, int] = {}
    engaged: list[list[int]] = []
    engaged_set: list[set[int]] = []
    positives_before: list[int] = []
    n_items = len(data.item_ids)

    ranks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    tops: dict[str, list[np.ndarray]] = {n: [] for n in names}
    fallbacks = dict.fromkeys(names, 0)
    scored_users: list[int] = []
    scored_targets: list[int] = []
    scored_ids: list[str] = []
    counts = {"events": len(data.events), "test_positive_events": 0, "cold_start_skipped": 0}
    counts["repeat_skipped"] = 0
    pending: list[_Pending] = []

    def flush() -> None:
        if not pending:
            return
        _score_chunk(data, index_of, engaged, pending, names, p.max_k, ranks, tops, fallbacks)
        pending.clear()

    for pos, event in enumerate(data.events):
        u = user_index.get(event.user_id)
        if u is None:
            u = user_index[event.user_id] = len(engaged)
            engaged.append([])
            engaged_set.append(set())
            positives_before.append(0)
        item = index_of[event.item_id]
        is_positive = bool(data.positive[pos])
        if event.ts >= split_ts and is_positive:
            counts["test_positive_events"] += 1
            if positives_before[u] < p.min_history:
                counts["cold_start_skipped"] += 1
            elif item in engaged_set[u]:
                counts["repeat_skipped"] += 1  # already excluded from every list: unscorable
            else:
                if on_score is not None:
                    on_score(event.event_id)
                queries: dict[str, Query | None] = {}
                for m in methods:
                    queries.update(zip(m.names, m.query(event.user_id, event.ts), strict=True))
                pending.append(_Pending(event, u, item, len(engaged[u]), queries))
                scored_users.append(u)
                scored_targets.append(item)
                scored_ids.append(event.event_id)
        # Apply the event only after it was scored.
        if item not in engaged_set[u]:
            engaged[u].append(item)
            engaged_set[u].add(item)
        if is_positive:
            positives_before[u] += 1
            action = Action(
                event.event_id,
                event.user_id,
                event.item_id,
                item,
                float(data.weight[pos]),
                event.ts,
                event.action,
            )
            for m in methods:
                if on_learn is not None:
                    for n in m.names:
                        on_learn(n, event.event_id)
                m.learn_one(action)
        if len(pending) >= p.chunk:
            flush()
    flush()
    user_ids = [""] * len(user_index)
    for uid, u in user_index.items():
        user_ids[u] = uid
    counts["scored_events"] = len(scored_ids)
    return ReplayResult(
        dataset=data.name,
        n_items=n_items,
        max_k=p.max_k,
        split_ts=split_ts,
        event_ids=scored_ids,
        users=np.array(scored_users, dtype=np.int64),
        user_ids=user_ids,
        targets=np.array(scored_targets, dtype=np.int64),
        ranks={n: np.concatenate(r) if r else np.zeros(0, np.int64) for n, r in ranks.items()},
        top={
            n: np.concatenate(t) if t else np.zeros((0, p.max_k), np.int64) for n, t in tops.items()
        },
        fallbacks=fallbacks,
        counts=counts,
    )


def _score_chunk(
    data: ReplayData,
    index_of: dict[str, int],
    engaged: list[list[int]],
    pending: list[_Pending],
    names: list[str],
    max_k: int,
    ranks: dict[str, list[np.ndarray]],
    tops: dict[str, list[np.ndarray]],
    fallbacks: dict[str, int],
) -> None:
    """Rank the catalogue for a chunk of test events: one matrix product per method."""
    n_events = len(pending)
    # Exclusions: each event's user's items engaged *before* it (a prefix of their history).
    excl_cols = [np.asarray(engaged[pe.user][: pe.n_engaged], dtype=np.int64) for pe in pending]
    targets = np.array([pe.target for pe in pending])

    def finish(name: str, top: np.ndarray) -> None:
        top = top.copy()
        hit = top == targets[:, None]
        rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
        ranks[name].append(rank.astype(np.int64))
        tops[name].append(top.astype(np.int64))

    # Popularity first: it is the fallback for everything else.
    pop_scores = np.stack([_as_scores(pe.queries["popularity"]) for pe in pending])
    popularity_top = ranked_subset(pop_scores, list(range(n_events)), excl_cols, max_k)
    for name in names:
        if name == "popularity":
            finish(name, popularity_top)
            continue
        top = np.full((n_events, max_k), -1, dtype=np.int64)
        queries = [pe.queries[name] for pe in pending]
        missing = [e for e, q in enumerate(queries) if q is None]
        fallbacks[name] += len(missing)
        if missing:
            top[missing] = popularity_top[missing]
        score_rows = [e for e, q in enumerate(queries) if isinstance(q, ScoreQuery)]
        if score_rows:
            s = np.stack([_as_scores(queries[e]) for e in score_rows])
            top[score_rows] = ranked_subset(s, score_rows, excl_cols, max_k)
        vec_events = [e for e, q in enumerate(queries) if isinstance(q, VectorQuery)]
        if vec_events:
            vqs = [q for q in queries if isinstance(q, VectorQuery)]
            q_matrix = np.concatenate([q.vectors for q in vqs]).astype(np.float32)
            owner_local = np.repeat(np.arange(len(vqs)), [len(q.vectors) for q in vqs])
            scores = q_matrix @ data.vectors.T
            # Mask rows by their event's exclusions (rows repeat per event's query vectors).
            row_excl = [excl_cols[vec_events[o]] for o in owner_local]
            lens = np.array([len(c) for c in row_excl])
            if lens.sum():
                scores[
                    np.repeat(np.arange(len(row_excl)), lens), np.concatenate(row_excl)
                ] = -np.inf
            row_top = _top_k(scores, max_k)
            row_scores = np.take_along_axis(scores, row_top, axis=1)
            starts = np.concatenate([[0], np.cumsum([len(q.vectors) for q in vqs])])
            for j, (e, q) in enumerate(zip(vec_events, vqs, strict=True)):
                a, b = starts[j], starts[j + 1]
                if not q.blended:
                    top[e] = row_top[a]
                    continue
                # Each medoid's list holds max_k unseen items, enough for blend to fill max_k
                # slots exactly as it would from unbounded lists.
                results = [
                    list(
                        zip(
                            [data.item_ids[c] for c in row_top[r].tolist()],
                            row_scores[r].tolist(),
                            strict=True,
                        )
                    )
                    for r in range(a, b)
                ]
                chosen = blend(results, q.importances.tolist(), max_k)
                picked = [index_of[c.item_id] for c in chosen]
                top[e, : len(picked)] = picked
        finish(name, top)


def ranked_subset(
    scores: np.ndarray, events: list[int], excl_cols: list[np.ndarray], max_k: int
) -> np.ndarray:
    lens = np.array([len(excl_cols[e]) for e in events])
    if lens.sum():
        rows = np.repeat(np.arange(len(events)), lens)
        scores[rows, np.concatenate([excl_cols[e] for e in events])] = -np.inf
    return _top_k(scores, max_k)


def _as_scores(q: Query | None) -> np.ndarray:
    if not isinstance(q, ScoreQuery):
        raise TypeError("the popularity method must answer with scores")
    return q.scores


# -- metrics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A metric over all scored events and its user-level bootstrap 95% interval."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


METRICS = ("recall_at_k", "ndcg_at_k", "hit_rate_at_k", "coverage_at_k")


def recall_curve(result: ReplayResult, name: str) -> list[float]:
    """Recall@K for K = 1..max_k (share of test events whose item is in the top K)."""
    r = result.ranks[name]
    if len(r) == 0:
        return [0.0] * result.max_k
    found = np.bincount(r[r > 0], minlength=result.max_k + 1)[1:]
    return (np.cumsum(found) / len(r)).tolist()


class _UserTotals:
    """Per-user sums of a method's hits and gains at K, and its top-K item incidence."""

    def __init__(self, result: ReplayResult, name: str, k: int, users: np.ndarray, n_users: int):
        rank = result.ranks[name]
        hit = (rank > 0) & (rank <= k)
        gain = np.where(hit, 1.0 / np.log2(np.maximum(rank, 1) + 1.0), 0.0)
        self.hits = np.bincount(users, weights=hit, minlength=n_users)
        self.gains = np.bincount(users, weights=gain, minlength=n_users)
        top = result.top[name][:, :k]
        valid = top >= 0
        incidence = np.zeros((n_users, result.n_items), dtype=np.float32)
        incidence[np.repeat(users, valid.sum(axis=1)), top[valid]] = 1.0
        self.incidence = incidence


def metrics(
    result: ReplayResult,
    k: int,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, dict[str, Estimate]], dict[str, dict[str, Estimate]]]:
    """Recall@K, NDCG@K, HitRate@K and catalogue coverage@K per method, and paired differences.

    - Recall@K: share of test events whose item is in the top K (one relevant item per event).
    - NDCG@K: mean of 1 / log2(rank + 1) over test events (0 beyond K).
    - HitRate@K: share of test users with at least one test event hit in the top K.
    - Coverage@K: share of the catalogue that appears in some top-K list.

    Intervals resample *users* (their events are correlated) ``bootstrap`` times; ``pairs``
    ``(a, b)`` get the interval of ``a - b`` on the same resamples (a paired test).
    """
    if not 1 <= k <= result.max_k:
        raise ValueError(f"k must be in 1..{result.max_k}, got {k}")
    if len(result.event_ids) == 0:
        raise ValueError("no scored test events: nothing to measure")
    present, users = np.unique(result.users, return_inverse=True)
    n_users = len(present)
    n_events = np.bincount(users, minlength=n_users).astype(np.float64)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=bootstrap).astype(np.float64)
    w_events = w @ n_events
    drawn = (w > 0).astype(np.float32)

    def point_and_samples(t: _UserTotals) -> dict[str, tuple[float, np.ndarray]]:
        covered = t.incidence.max(axis=0).sum() / result.n_items
        boot_cov = ((drawn @ t.incidence) > 0).sum(axis=1) / result.n_items
        return {
            "recall_at_k": (t.hits.sum() / n_events.sum(), (w @ t.hits) / w_events),
            "ndcg_at_k": (t.gains.sum() / n_events.sum(), (w @ t.gains) / w_events),
            "hit_rate_at_k": (
                float((t.hits > 0).mean()),
                (w @ (t.hits > 0).astype(np.float64)) / n_users,
            ),
            "coverage_at_k": (float(covered), boot_cov.astype(np.float64)),
        }

    samples = {
        name: point_and_samples(_UserTotals(result, name, k, users, n_users))
        for name in result.ranks
    }

    def estimate(value: float, boot: np.ndarray, metric: str) -> Estimate:
        lo, mid, hi = np.quantile(boot, [0.025, 0.5, 0.975])
        if metric == "coverage_at_k":
            # Coverage counts distinct items, not a mean over users: a resample holds ~63% of
            # the distinct users and so covers fewer items. Its spread is placed around the
            # point value instead of its biased-low centre.
            lo, hi = value - (mid - lo), value + (hi - mid)
        return Estimate(float(value), float(lo), float(hi))

    per_method = {
        name: {m: estimate(*samples[name][m], m) for m in METRICS} for name in result.ranks
    }
    diffs: dict[str, dict[str, Estimate]] = {}
    for a, b in pairs:
        diffs[f"{a} - {b}"] = {
            m: estimate(samples[a][m][0] - samples[b][m][0], samples[a][m][1] - samples[b][m][1], m)
            for m in METRICS
        }
    return per_method, diffs

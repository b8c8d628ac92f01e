"""Offline quality of recommendations: a chronological replay with a global time split.

Protocol (``evaluate``): events are replayed in timestamp order. The first ``split`` of the time
range warms the methods up; in the rest, every positive engagement is a test event: **before**
the event is applied, each method ranks the whole catalogue for that user from its current
state (items the user already engaged with are excluded), the rank of the engaged item is
recorded, and only then is the event applied to every method. Events whose user had fewer than
``min_history`` earlier positive engagements are applied but not scored (cold start is the same
popularity list for every method, so it would only dilute the comparison).

The methods (``serving.evaluation.methods``) see the same catalogue, the same embeddings and the
same exclusions.

Scoring is vectorized: queries are collected while replaying and scored a chunk at a time with
one matrix product per method (exact search; the catalogue is small). A method with no state
for a user (e.g. all its actions expired) falls back to the popularity list, and that is
counted. Metrics (``serving.evaluation.metrics``) come with user-level bootstrap 95% intervals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.blend import blend
from serving.evaluation.data import ReplayData
from serving.evaluation.methods.base import Action, Query, ReplayMethod, ScoreQuery, VectorQuery
from streams.schemas import Engagement

log = logging.getLogger(__name__)


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
        # Queries are grouped by the item space they search (a refreshed method's queries
        # span several versions of its vectors).
        by_space: dict[int, list[int]] = {}
        for e, q in enumerate(queries):
            if isinstance(q, VectorQuery):
                by_space.setdefault(id(q.catalogue), []).append(e)
        for vec_events in by_space.values():
            vqs = [q for e in vec_events if isinstance(q := queries[e], VectorQuery)]
            _search(data, index_of, vqs, vec_events, excl_cols, max_k, top)
        finish(name, top)


def _search(
    data: ReplayData,
    index_of: dict[str, int],
    vqs: list[VectorQuery],
    vec_events: list[int],
    excl_cols: list[np.ndarray],
    max_k: int,
    top: np.ndarray,
) -> None:
    """Fill ``top[vec_events]`` from vector queries that all search the same item space."""
    catalogue = vqs[0].catalogue if vqs[0].catalogue is not None else data.vectors
    q_matrix = np.concatenate([q.vectors for q in vqs]).astype(np.float32)
    owner_local = np.repeat(np.arange(len(vqs)), [len(q.vectors) for q in vqs])
    scores = q_matrix @ catalogue.T
    if vqs[0].catalogue is not None:
        absent = ~catalogue.any(axis=1)
        if absent.any():
            scores[:, absent] = -np.inf  # items without a vector are not in this space
    # Mask rows by their event's exclusions (rows repeat per event's query vectors).
    row_excl = [excl_cols[vec_events[o]] for o in owner_local]
    lens = np.array([len(c) for c in row_excl])
    if lens.sum():
        scores[np.repeat(np.arange(len(row_excl)), lens), np.concatenate(row_excl)] = -np.inf
    row_top = _top_k(scores, max_k)
    row_scores = np.take_along_axis(scores, row_top, axis=1)
    row_top[row_scores == -np.inf] = -1  # fewer than max_k items left to rank: a short list
    starts = np.concatenate([[0], np.cumsum([len(q.vectors) for q in vqs])])
    for j, (e, q) in enumerate(zip(vec_events, vqs, strict=True)):
        a, b = starts[j], starts[j + 1]
        if not q.blended:
            top[e] = row_top[a]
            continue
        # Each medoid's list holds max_k unseen items, enough for blend to fill max_k slots
        # exactly as it would from unbounded lists.
        results = [
            [
                (data.item_ids[c], s)
                for c, s in zip(row_top[r].tolist(), row_scores[r].tolist(), strict=True)
                if c >= 0
            ]
            for r in range(a, b)
        ]
        chosen = blend(results, q.importances.tolist(), max_k)
        picked = [index_of[c.item_id] for c in chosen]
        top[e, : len(picked)] = picked


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

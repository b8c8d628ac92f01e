"""The pure parts of serving: popularity, the per-medoid ANN cache, the recommender, what a
replica reads of a ``user-interests`` record (seen items, the dashboard's projection)."""

from __future__ import annotations

import gc
from collections.abc import Sequence

import numpy as np
import pytest

from serving.api.projection import pca2, projection
from serving.popularity import HOUR_MS, DecayedPopularity
from serving.readmodels.users import profile_from_record
from serving.recommend import (
    InterestView,
    ItemInfo,
    NeighborCache,
    RecommendConfig,
    Recommender,
    UserProfile,
)
from stores import ExactIndex
from streams.interests import InterestClusters, unit
from streams.schemas import UserInterests, user_interests_json
from tests._serving import interests_record, make_world


def test_popularity_decays_by_half_life_and_ranks_recent_activity_first() -> None:
    pop = DecayedPopularity(half_life_hours=1.0)
    t0 = 1_700_000_000_000
    pop.learn_many(["old"] * 8, [t0] * 8)
    pop.learn_many(["new"] * 3, [t0 + 2 * HOUR_MS] * 3)
    now = t0 + 2 * HOUR_MS
    assert pop.score("old", now) == pytest.approx(2.0)  # 8 halved twice
    assert pop.score("new", now) == pytest.approx(3.0)
    assert [i for i, _ in pop.top(2, now)] == ["new", "old"]
    assert pop.top(5, now, exclude={"new"}) == [("old", pytest.approx(2.0))]
    assert pop.top(5, now, keep=lambda i: i != "old") == [("new", pytest.approx(3.0))]


def test_popularity_survives_long_horizons_forgets_and_round_trips() -> None:
    pop = DecayedPopularity(half_life_hours=1.0)
    t0 = 0
    for day in range(200):  # 4800 half-lives: the reference time must be rebased
        pop.learn_one(f"i{day % 3}", t0 + day * 24 * HOUR_MS)
    now = t0 + 199 * 24 * HOUR_MS
    assert pop.top(1, now)[0][0] == f"i{199 % 3}"
    assert all(np.isfinite(s) for _, s in pop.top(3, now))
    assert pop.forget("i0") and not pop.forget("i0")
    assert pop.forgotten == {"i0"}  # what the next snapshot leaves out
    back = DecayedPopularity.from_bytes(pop.to_bytes())
    assert [i for i, _ in back.top(3, now)] == [i for i, _ in pop.top(3, now)]
    assert [s for _, s in back.top(3, now)] == pytest.approx([s for _, s in pop.top(3, now)])
    assert "i0" not in back


def test_popularity_scores_slots_as_one_array_and_counts_without_decay() -> None:
    pop = DecayedPopularity(half_life_hours=1.0)
    pop.learn_many(["a", "b", "a"], [0, HOUR_MS, 2 * HOUR_MS], [1.0, 2.0, 1.0])
    pop.learn_one("c", 2 * HOUR_MS, 0.5)
    slots = pop.slots_of(["c", "unknown", "a", "b"])
    assert slots[1] == -1
    assert pop.forget("b")
    now = 3 * HOUR_MS
    assert pop.slot_scores(slots, now).tolist() == pytest.approx(
        [pop.score("c", now), 0.0, pop.score("a", now), -np.inf]
    )
    plain = DecayedPopularity(half_life_hours=np.inf)
    plain.learn_many(["a", "a"], [0, 1000 * HOUR_MS])
    plain.learn_one("a", 10**9 * HOUR_MS, 2.0)
    back = DecayedPopularity.from_bytes(plain.to_bytes())
    assert back.score("a", 10**12 * HOUR_MS) == plain.score("a", 0) == 4.0


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_neighbor_cache_drops_entries_a_new_item_would_enter_and_keeps_others() -> None:
    cache = NeighborCache(dim=2, capacity=4, ttl_s=60)
    near, far = _unit(np.array([1.0, 0.0])), _unit(np.array([0.0, 1.0]))
    assert cache.put("m-near", near, [("a", 0.9), ("b", 0.8)], depth=2, epoch=cache.epoch)
    assert cache.put("m-far", far, [("c", 0.95), ("d", 0.9)], depth=2, epoch=cache.epoch)
    # A new item at cosine ~0.87 to m-near beats its worst hit (0.8), and is far from m-far.
    assert cache.invalidate_near(_unit(np.array([0.87, 0.5]))[None, :]) == 1
    assert cache.get("m-near", 2) is None
    assert cache.get("m-far", 2) == (("c", 0.95), ("d", 0.9))


def test_neighbor_cache_refuses_a_result_computed_before_an_invalidation() -> None:
    cache = NeighborCache(dim=2, capacity=4, ttl_s=60)
    epoch = cache.epoch  # a query starts its search here...
    cache.invalidate_near(np.array([[1.0, 0.0]], dtype=np.float32))  # ...an item lands meanwhile
    assert not cache.put("m", np.array([1.0, 0.0], np.float32), [("a", 0.5)], 1, epoch)
    assert cache.get("m", 1) is None


def test_neighbor_cache_expires_and_evicts_least_recent() -> None:
    now = [0.0]
    cache = NeighborCache(dim=2, capacity=2, ttl_s=5, clock=lambda: now[0])
    v = np.array([1.0, 0.0], np.float32)
    for m in ("a", "b", "c"):
        cache.put(m, v, [("x", 0.1)], 1, cache.epoch)
    assert cache.get("a", 1) is None and cache.get("c", 1) == (("x", 0.1),)  # a evicted
    now[0] = 6.0
    assert cache.get("c", 1) is None  # expired


def _catalog_world(n_topics: int = 4, per_topic: int = 30, dim: int = 16, seed: int = 1):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_topics, dim))
    ids, vecs, catalog = [], [], {}
    for t in range(n_topics):
        for j in range(per_topic):
            item_id = f"t{t}-{j}"
            ids.append(item_id)
            vecs.append(centers[t] + 0.3 * rng.normal(size=dim))
            catalog[item_id] = ItemInfo(title=f"item {item_id}", category=f"cat{t % 2}")
    index = ExactIndex(dim)
    index.upsert(ids, np.array(vecs, dtype=np.float32))
    return index, catalog


def _profile(interests: list[tuple[str, float]], seen: set[str]) -> UserProfile:
    return UserProfile(
        "u1", tuple(InterestView(m, imp, 5) for m, imp in interests), frozenset(seen), 5
    )


def test_recommend_blends_interests_by_importance_and_explains_them() -> None:
    index, catalog = _catalog_world()
    rec = Recommender(index, catalog, DecayedPopularity())
    profile = _profile([("t0-0", 3.0), ("t2-0", 1.0)], {"t0-0", "t0-1", "t2-0"})
    out = rec.recommend(profile, 8)
    assert not out.cold_start
    assert [i.medoid for i in out.interests] == ["t0-0", "t2-0"]
    by_interest = [out.interests[r.interest].medoid for r in out.items if r.interest is not None]
    assert by_interest.count("t0-0") == 6 and by_interest.count("t2-0") == 2  # quota 3:1
    for r in out.items:
        topic = out.interests[r.interest].medoid.split("-")[0] if r.interest is not None else ""
        assert r.item_id.startswith(topic + "-")  # each item comes from its interest's topic
        assert r.item_id not in profile.seen
        assert r.title == f"item {r.item_id}"


def test_recommend_skips_deleted_and_filters_category_even_from_the_cache() -> None:
    index, catalog = _catalog_world()
    rec = Recommender(index, catalog, DecayedPopularity())
    profile = _profile([("t0-0", 1.0), ("t1-0", 1.0)], {"t0-0", "t1-0"})
    first = rec.recommend(profile, 10)
    victim = first.items[0].item_id
    del catalog[victim]  # the read model removes a deleted item from the catalog first
    again = rec.recommend(profile, 10)
    assert victim not in {r.item_id for r in again.items} and len(again.items) == 10
    only = rec.recommend(profile, 10, category="cat1")  # t1 is cat1, t0 is cat0
    assert only.items and all(catalog[r.item_id].category == "cat1" for r in only.items)


def test_recommend_widens_when_the_user_has_seen_the_whole_neighbourhood() -> None:
    index, catalog = _catalog_world(per_topic=30)
    rec = Recommender(
        index, catalog, DecayedPopularity(), RecommendConfig(candidates_per_interest=10)
    )
    seen = {f"t0-{j}" for j in range(25)}
    out = rec.recommend(_profile([("t0-0", 1.0)], seen), 5)
    assert len(out.items) == 5 and not seen & {r.item_id for r in out.items}


def test_unknown_user_gets_popular_items_marked_cold_start() -> None:
    index, catalog = _catalog_world()
    pop = DecayedPopularity()
    pop.learn_many(["t3-1"] * 5 + ["t1-2"] * 2 + ["gone"] * 9, [0] * 16)
    rec = Recommender(index, catalog, pop)
    out = rec.recommend(None, 3, user_id="stranger", now_ms=0)
    assert out.cold_start and out.reason == "unknown user"
    assert [r.item_id for r in out.items] == ["t3-1", "t1-2"]  # "gone" is not in the catalog
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend(None, 0)


def test_cached_neighbour_lists_and_profiles_are_left_out_of_garbage_collections() -> None:
    """A full collection under load walked every cached profile and list (12-38 ms pauses):
    the caches hold plain tuples, which the collector untracks."""
    from serving.readmodels.users import _pack, _unpack

    cache = NeighborCache(dim=2, capacity=4)
    cache.put("m", _unit(np.array([1.0, 0.0])), [("a", 0.9), ("b", 0.8)], depth=2, epoch=0)
    profile = UserProfile("u1", (InterestView("m", 2.0, 3, ("a", "b")),), frozenset({"a"}), 3)
    packed = _pack(profile)
    for _ in range(4):  # a collection untracks a tuple once the tuples inside it are
        gc.collect()

    assert not gc.is_tracked(cache.get("m", 2))
    assert not gc.is_tracked(packed)
    assert _unpack(packed) == profile


class _Replica:
    """What the projection reads of the read models: item vectors and the catalog."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.catalog = {i: ItemInfo(title=f"title of {i}") for i in vectors}

    def item_vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        found = [i for i in ids if i in self.vectors]
        return found, np.array([self.vectors[i] for i in found]).reshape(len(found), -1)


def _engine_projection(
    state: InterestClusters, vectors: dict[str, np.ndarray], published: int, max_points: int
) -> list[tuple[str, float, float, int, bool, int]]:
    """The points the dashboard drew from the engine's state before records carried actions:
    the newest distinct items, their PCA, and their cluster's rank (-1 beyond ``published``)."""
    now = state.last_ts
    order = np.argsort(-state.importances(now), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ids, clusters = state.assignments()
    times = state.action_times()
    latest: dict[str, int] = {}
    for pos in np.argsort(-times, kind="stable").tolist():
        latest.setdefault(ids[pos], pos)
        if len(latest) >= max_points:
            break
    xy = pca2(np.stack([unit(vectors[i]) for i in latest]))
    medoids = {i.medoid for i in state.top_medoids(published, now)}
    return [
        (
            item,
            round(x, 5),
            round(y, 5),
            int(rank[clusters[pos]]) if rank[clusters[pos]] < published else -1,
            item in medoids,
            int(times[pos]),
        )
        for (item, pos), (x, y) in zip(latest.items(), xy.tolist(), strict=True)
    ]


@pytest.mark.parametrize("published", [10, 2])
def test_seen_items_and_projection_come_from_the_records_actions_without_engine_bytes(
    published: int,
) -> None:
    world = make_world(users=6, items=200, events=900, seed=4)
    replica = _Replica(world.vectors)
    interests_drawn: set[int] = set()
    for user, state in world.states.items():
        record = interests_record(user, state, published=published)
        assert record.state is None and record.actions is not None
        assert profile_from_record(record).seen == state.seen_items
        points = projection(record, replica, max_points=12)  # type: ignore[arg-type]
        got = [(p["item_id"], p["x"], p["y"], p["interest"], p["medoid"], p["ts"]) for p in points]
        want = _engine_projection(state, world.vectors, published, max_points=12)
        assert [g[:1] + g[3:] for g in got] == [w[:1] + w[3:] for w in want]
        assert np.allclose([g[1:3] for g in got], [w[1:3] for w in want], atol=1e-4)
        assert all(p["title"] == f"title of {p['item_id']}" for p in points)
        interests_drawn.update(p["interest"] for p in points)
    assert (-1 in interests_drawn) == (published == 2)  # the small worlds' users have < 10
    # An item the replica no longer has is left out; the next newest takes its place.
    newest = points[0]["item_id"]
    del replica.vectors[newest]
    fewer = projection(record, replica, max_points=12)  # type: ignore[arg-type]
    assert len(points) == len(fewer) == 12
    assert [p["item_id"] for p in fewer][:11] == [p["item_id"] for p in points][1:]


def test_a_record_without_actions_an_older_workers_is_still_served() -> None:
    record = UserInterests.model_validate_json(
        user_interests_json(
            user_id="u1",
            interests=[("m1", 2.0, 3, ("a", "m1")), ("m2", 1.0, 1, ("m2",))],
            n_actions=4,
            last_event_id="e4",
            last_event_ts=1_700_000_000_000,
            updated_ms=1_700_000_000_100,
        )
    )
    assert record.actions is None
    profile = profile_from_record(record)
    assert profile.seen == {"m1", "a", "m2"}  # what it tells: medoids and members
    assert [i.medoid for i in profile.interests] == ["m1", "m2"]
    assert projection(record, _Replica({}), max_points=10) == []  # type: ignore[arg-type]

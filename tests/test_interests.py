"""The interests engine (streaming PinnerSage), pure: no Kafka, no disk."""

from __future__ import annotations

import struct
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from sklearn.metrics import adjusted_rand_score

from serving.datasets.generated import generate
from streams.interests import (
    DAY_MS,
    InterestClusters,
    InterestConfig,
    StateFormatError,
    medoid_of,
    ward_labels,
)
from streams.interests.state_format import FORMAT_VERSION
from streams.schemas import Engagement
from tests._streaming import topic_vectors

T0 = 1_700_000_000_000


def ev(i: int, item: str, ts: int, action: str = "click", user: str = "u") -> Engagement:
    return Engagement(event_id=f"e{i}", user_id=user, item_id=item, action=action, ts=ts)


def lookup_in(vectors: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    def lookup(ids):  # type: ignore[no-untyped-def]
        found = [i for i in ids if i in vectors]
        return found, np.array([vectors[i] for i in found]).reshape(len(found), -1)

    return lookup


@pytest.fixture(scope="module")
def generated():  # type: ignore[no-untyped-def]
    data = generate(users=60, items=1500, events=8000, seed=3)
    vectors = topic_vectors(data.truth, dim=64, seed=3, noise=0.55)
    return data, vectors


def run_users(data, vectors, config):  # type: ignore[no-untyped-def]
    states: dict[str, InterestClusters] = {}
    for e in data.engagements:
        states.setdefault(e.user_id, InterestClusters(config)).learn_one(e, vectors[e.item_id])
    return states


def truth_scores(data, states) -> np.ndarray:  # type: ignore[no-untyped-def]
    """ARI of each user's clusters against their items' latent topics (users with >= 30)."""
    item_topic = data.truth["items"]
    scores = []
    for state in states.values():
        if state.n_actions >= 30:
            ids, labels = state.assignments()
            scores.append(adjusted_rand_score([item_topic[i] for i in ids], labels))
    return np.array(scores)


def test_clusters_recover_every_users_latent_interests(generated) -> None:  # type: ignore[no-untyped-def]
    data, vectors = generated
    scores = truth_scores(data, run_users(data, vectors, InterestConfig()))
    assert len(scores) >= 20
    assert scores.min() >= 0.8, np.sort(scores)[:5]


def test_purely_incremental_clusters_recover_the_interests_too(generated) -> None:  # type: ignore[no-untyped-def]
    data, vectors = generated
    scores = truth_scores(data, run_users(data, vectors, InterestConfig(recluster_every=0)))
    # Greedy assignment alone (no recluster ever) errs for a few users, not for most.
    assert scores.mean() >= 0.95 and np.mean(scores >= 0.8) >= 0.9, np.sort(scores)[:5]


def test_incremental_clusters_agree_with_a_full_ward_recluster(generated) -> None:  # type: ignore[no-untyped-def]
    data, vectors = generated
    states = run_users(data, vectors, InterestConfig(recluster_every=0))
    scores = []
    for state in states.values():
        if state.n_actions < 30:
            continue
        _, incremental = state.assignments()
        state.recluster()
        _, full = state.assignments()
        scores.append(adjusted_rand_score(incremental, full))
    assert np.mean(scores) >= 0.95 and np.mean(np.array(scores) >= 0.8) >= 0.9, scores


def test_young_users_are_reclustered_early_then_every_n_events() -> None:
    state = InterestClusters(InterestConfig(recluster_every=200))
    calls: list[int] = []
    recluster = state.recluster
    state.recluster = lambda: (calls.append(state._applied), recluster())[1]  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    for i in range(650):
        state.learn_one(ev(i, f"i{i}", T0 + i), rng.normal(size=8))
    assert calls == [16, 32, 64, 128, 200, 400, 600]


def test_top_medoids_are_members_ranked_by_decayed_importance(generated) -> None:  # type: ignore[no-untyped-def]
    data, vectors = generated
    states = run_users(data, vectors, InterestConfig())
    state = max(states.values(), key=lambda s: s.n_actions)
    top = state.top_medoids(3, state.last_ts)
    assert len(top) == min(3, state.n_clusters) >= 2
    assert [t.importance for t in top] == sorted((t.importance for t in top), reverse=True)
    for interest in top:
        assert interest.medoid in interest.members
        assert np.allclose(interest.medoid_vector, vectors[interest.medoid], atol=1e-6)


def test_published_summaries_say_what_top_medoids_say(generated) -> None:  # type: ignore[no-untyped-def]
    data, vectors = generated
    for state in run_users(data, vectors, InterestConfig()).values():
        now = state.last_ts + DAY_MS
        assert state.published(10, now, members=5)[0] == [
            (i.medoid, i.importance, i.size, i.members[:5]) for i in state.top_medoids(10, now)
        ]


def test_importance_is_the_decayed_sum_of_action_weights() -> None:
    config = InterestConfig(decay_per_day=0.1, action_weights={"view": 1.0, "save": 4.0})
    state = InterestClusters(config)
    v = np.ones(8, dtype=np.float32)
    state.learn_one(ev(1, "a", T0, "view"), v)
    state.learn_one(ev(2, "b", T0 + DAY_MS, "save"), v)
    [interest] = state.top_medoids(5, T0 + 11 * DAY_MS)
    expected = 1.0 * np.exp(-0.1 * 11) + 4.0 * np.exp(-0.1 * 10)
    assert interest.importance == pytest.approx(expected)
    assert interest.size == 2


def test_a_distant_action_starts_a_new_cluster_and_the_cap_merges_the_cheapest_pair() -> None:
    state = InterestClusters(InterestConfig(max_clusters=2, recluster_every=0))
    basis = np.eye(4, dtype=np.float32)
    near = (basis[0] + 0.3 * basis[3]) / np.linalg.norm(basis[0] + 0.3 * basis[3])
    state.learn_one(ev(1, "x0", T0), basis[0])
    state.learn_one(ev(2, "x1", T0 + 1), basis[1])
    assert state.n_clusters == 2
    state.learn_one(ev(3, "x0b", T0 + 2), near)  # joins x0's cluster: cost 0.5 * 0.08 < 0.75
    assert state.n_clusters == 2
    state.learn_one(ev(4, "x2", T0 + 3), basis[2])  # a third cluster exceeds the cap of 2
    assert state.n_clusters == 2
    ids, labels = state.assignments()
    groups = defaultdict(set)
    for i, label in zip(ids, labels, strict=True):
        groups[int(label)].add(i)
    assert {"x0", "x0b"} in list(groups.values())


def test_old_and_surplus_actions_are_evicted_and_medoids_replaced() -> None:
    state = InterestClusters(InterestConfig(window_days=10, max_actions=3, recluster_every=0))
    v = np.eye(3, dtype=np.float32)
    state.learn_one(ev(1, "a", T0), v[0])
    state.learn_one(ev(2, "b", T0 + 1), v[0])
    state.learn_one(ev(3, "c", T0 + 2), v[0])
    state.learn_one(ev(4, "d", T0 + 3), v[0])  # over the cap of 3: the oldest (a) goes
    assert state.seen_items == {"b", "c", "d"}
    state.learn_one(ev(5, "e", T0 + 11 * DAY_MS), v[1])  # a, b, c, d are now out of the window
    assert state.seen_items == {"e"}
    assert [i.medoid for i in state.top_medoids(3, state.last_ts)] == ["e"]
    # A late event older than the window changes nothing.
    assert not state.learn_one(ev(6, "f", T0), v[2])
    assert state.seen_items == {"e"}


def test_late_events_are_applied_with_their_own_timestamp() -> None:
    state = InterestClusters(InterestConfig(decay_per_day=0.5))
    v = np.ones(4, dtype=np.float32)
    state.learn_one(ev(1, "new", T0 + 4 * DAY_MS), v)
    state.learn_one(ev(2, "old", T0), v)
    [interest] = state.interests(T0 + 4 * DAY_MS)
    assert interest.importance == pytest.approx(2.0 * (1 + np.exp(-0.5 * 4)))
    assert state.last_ts == T0 + 4 * DAY_MS


def test_a_rejected_embedding_leaves_the_event_retryable() -> None:
    state = InterestClusters()
    state.learn_one(ev(1, "a", T0), np.ones(4, dtype=np.float32))
    for bad in (np.zeros(4), np.full(4, np.nan), np.ones(5)):
        with pytest.raises(ValueError):
            state.learn_one(ev(2, "b", T0 + 1), bad)
        assert not state.remembers("e2") and state.last_event_id == "e1"
    assert state.learn_one(ev(2, "b", T0 + 1), np.ones(4, dtype=np.float32))
    assert state.n_actions == 2 and state.last_event_id == "e2"


def test_deleting_an_item_removes_it_everywhere_and_forget_empties_the_user() -> None:
    state = InterestClusters(InterestConfig(recluster_every=0))
    v = np.eye(4, dtype=np.float32)
    for i, (item, vec) in enumerate([("a", v[0]), ("b", v[1]), ("a", v[0]), ("c", v[0])]):
        state.learn_one(ev(i, item, T0 + i), vec)
    assert state.forget_item("a")
    assert "a" not in state.seen_items and state.n_actions == 2
    assert all("a" not in i.members and i.medoid != "a" for i in state.interests(T0))
    assert not state.forget_item("a")
    state.forget()
    assert state.n_actions == 0 and state.interests(T0) == [] and state.seen_items == frozenset()
    assert state.to_bytes() == InterestClusters().to_bytes()


def test_medoid_minimizes_the_sum_of_squared_distances() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=(int(rng.integers(1, 30)), 16)).astype(np.float32)
        ids = [f"i{i}" for i in range(len(x))]
        brute = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).sum(1)
        assert brute[medoid_of(x, ids)] == pytest.approx(brute.min(), rel=1e-4)


def test_full_recluster_cuts_ward_at_the_same_threshold() -> None:
    rng = np.random.default_rng(1)
    centers = np.eye(3, 32)
    x = np.repeat(centers, 20, axis=0) + 0.05 * rng.normal(size=(60, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = ward_labels(x.astype(np.float32), threshold=0.75, max_clusters=12)
    assert adjusted_rand_score(np.repeat([0, 1, 2], 20), labels) == 1.0
    assert ward_labels(x.astype(np.float32), threshold=0.75, max_clusters=2).max() == 2


def test_ward_labels_match_scipys_public_linkage_and_fcluster() -> None:
    rng = np.random.default_rng(5)
    for n in (2, 3, 16, 33, 120):
        x = rng.normal(size=(n, 24)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        tree = linkage(pdist(x.astype(np.float64)), method="ward")
        for threshold, cap in ((0.5, 12), (0.9, 12), (0.5, 3)):
            expected = fcluster(tree, t=np.sqrt(2.0 * threshold), criterion="distance")
            if expected.max() > cap:
                expected = fcluster(tree, t=cap, criterion="maxclust")
            got = ward_labels(x, threshold, cap)
            assert adjusted_rand_score(expected, got) == 1.0, (n, threshold, cap)
            assert got.max() == expected.max()


def test_serialization_is_compact_and_rejects_other_versions() -> None:
    rng = np.random.default_rng(2)
    vectors = {f"i{i}": rng.normal(size=384).astype(np.float32) for i in range(600)}
    state = InterestClusters()
    for i in range(700):
        item = f"i{i % 600}"
        state.learn_one(ev(i, item, T0 + i * 1000), vectors[item])
    blob = state.to_bytes()
    assert state.n_actions == 500
    assert len(blob) <= 64 * 1024
    again = InterestClusters.from_bytes(blob, lookup_in(vectors))
    assert again.to_bytes() == blob
    bad = blob[:4] + struct.pack("<B", FORMAT_VERSION + 1) + blob[5:]
    with pytest.raises(StateFormatError, match="version"):
        InterestClusters.from_bytes(bad, lookup_in(vectors))
    with pytest.raises(StateFormatError):
        InterestClusters.from_bytes(blob[:-3], lookup_in(vectors))


def test_loading_drops_actions_on_items_the_store_no_longer_has() -> None:
    v = np.eye(3, dtype=np.float32)
    vectors = {"a": v[0], "b": v[0], "c": v[1]}
    state = InterestClusters(InterestConfig(recluster_every=0))
    for i, item in enumerate("abc"):
        state.learn_one(ev(i, item, T0 + i), vectors[item])
    del vectors["c"]
    loaded = InterestClusters.from_bytes(state.to_bytes(), lookup_in(vectors))
    assert loaded.seen_items == {"a", "b"} and loaded.n_clusters == 1


# -- properties ---------------------------------------------------------------------------

DIM = 6
event_lists = st.lists(
    st.tuples(
        st.integers(0, 3),  # user
        st.integers(0, 15),  # item
        st.integers(0, 200),  # day
        st.sampled_from(["view", "click", "save"]),
    ),
    min_size=1,
    max_size=60,
)
ITEM_VECTORS = {
    f"i{i}": v / np.linalg.norm(v)
    for i, v in enumerate(np.random.default_rng(7).normal(size=(16, DIM)).astype(np.float32))
}
SMALL = InterestConfig(max_clusters=3, max_actions=20, window_days=60, recluster_every=7)


def as_events(raw: list[tuple[int, int, int, str]]) -> list[Engagement]:
    return [
        Engagement(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{i}", action=a, ts=T0 + d * DAY_MS)
        for n, (u, i, d, a) in enumerate(raw)
    ]


def states_of(events: list[Engagement]) -> dict[str, bytes]:
    states: dict[str, InterestClusters] = {}
    for e in events:
        states.setdefault(e.user_id, InterestClusters(SMALL)).learn_one(e, ITEM_VECTORS[e.item_id])
    return {u: s.to_bytes() for u, s in sorted(states.items())}


@settings(max_examples=60, deadline=None)
@given(event_lists)
def test_medoids_are_members_and_the_cluster_cap_holds(raw) -> None:  # type: ignore[no-untyped-def]
    state = InterestClusters(SMALL)
    for e in as_events(raw):
        state.learn_one(e, ITEM_VECTORS[e.item_id])
        assert state.n_clusters <= SMALL.max_clusters
        assert state.n_actions <= SMALL.max_actions
        for interest in state.interests(state.last_ts):
            assert interest.medoid in interest.members
            assert set(interest.members) <= state.seen_items


@settings(max_examples=60, deadline=None)
@given(event_lists)
def test_a_view_answers_every_query_like_the_full_state(raw) -> None:  # type: ignore[no-untyped-def]
    state = InterestClusters(SMALL)
    for e in as_events(raw):
        state.learn_one(e, ITEM_VECTORS[e.item_id])
    full, view = state.to_bytes(), state.to_bytes(view=True)
    assert InterestClusters.items_in(view) == InterestClusters.items_in(full)
    rebuilt = InterestClusters.from_bytes(view, lookup_in(ITEM_VECTORS), config=SMALL)
    assert rebuilt.to_bytes(view=True) == view
    now = state.last_ts
    got, want = rebuilt.interests(now), state.interests(now)
    assert [(i.medoid, i.size, i.members) for i in got] == [
        (i.medoid, i.size, i.members) for i in want
    ]
    # Importances sum the same terms, in slot order, which a reload may change: to rounding.
    assert [i.importance for i in got] == pytest.approx([i.importance for i in want], rel=1e-12)
    # Sums rebuilt from the members: equal up to float rounding.
    np.testing.assert_allclose(rebuilt._sums, state._sums, atol=1e-5)
    if state.n_clusters:
        assert len(view) < len(full)


@settings(max_examples=60, deadline=None)
@given(event_lists, st.data())
def test_cached_live_slots_follow_every_add_eviction_and_delete(raw, data) -> None:  # type: ignore[no-untyped-def]
    state = InterestClusters(SMALL)

    def fresh() -> tuple[list[int], list[int]]:
        live = np.flatnonzero(state._ts != np.iinfo(np.int64).max)
        return live.tolist(), live[np.argsort(state._seq[live], kind="stable")].tolist()

    for e in as_events(raw):
        state.learn_one(e, ITEM_VECTORS[e.item_id])
        if data.draw(st.booleans()):
            state.forget_item(data.draw(st.sampled_from(sorted(ITEM_VECTORS))))
        assert (state._live_in_slot_order().tolist(), state._live_slots().tolist()) == fresh()
    state = InterestClusters.from_bytes(state.to_bytes(), lookup_in(ITEM_VECTORS), config=SMALL)
    assert (state._live_in_slot_order().tolist(), state._live_slots().tolist()) == fresh()


@settings(max_examples=60, deadline=None)
@given(event_lists, st.integers(1, 400), st.integers(1, 400))
def test_importance_decays_monotonically(raw, later, much_later) -> None:  # type: ignore[no-untyped-def]
    state = InterestClusters(SMALL)
    for e in as_events(raw):
        state.learn_one(e, ITEM_VECTORS[e.item_id])
    now = state.last_ts
    t1, t2 = sorted((now + later * DAY_MS, now + (later + much_later) * DAY_MS))
    assert np.all(state.importances(t2) <= state.importances(t1))
    assert np.all(state.importances(t1) <= state.importances(now))


@settings(max_examples=60, deadline=None)
@given(event_lists)
def test_serialization_round_trips_exactly_and_evolves_identically(raw) -> None:  # type: ignore[no-untyped-def]
    events = as_events(raw)
    half = len(events) // 2
    uninterrupted = InterestClusters(SMALL)
    restarted = InterestClusters(SMALL)
    for e in events[:half]:
        uninterrupted.learn_one(e, ITEM_VECTORS[e.item_id])
        restarted.learn_one(e, ITEM_VECTORS[e.item_id])
    blob = restarted.to_bytes()
    restarted = InterestClusters.from_bytes(blob, lookup_in(ITEM_VECTORS), config=SMALL)
    assert restarted.to_bytes() == blob
    for e in events[half:]:
        uninterrupted.learn_one(e, ITEM_VECTORS[e.item_id])
        restarted.learn_one(e, ITEM_VECTORS[e.item_id])
    assert restarted.to_bytes() == uninterrupted.to_bytes()


@settings(max_examples=60, deadline=None)
@given(event_lists, st.data())
def test_duplicates_and_replays_change_nothing(raw, data) -> None:  # type: ignore[no-untyped-def]
    events = as_events(raw)
    clean = states_of(events)
    # Inject redeliveries: each duplicate comes right after or a little after its original.
    with_dups: list[Engagement] = []
    for e in events:
        with_dups.append(e)
        if data.draw(st.booleans()):
            with_dups.append(e)
    assert states_of(with_dups) == clean
    assert states_of(events + events) == clean


@settings(max_examples=60, deadline=None)
@given(event_lists, st.randoms(use_true_random=False))
def test_interleaving_of_different_users_never_matters(raw, rnd) -> None:  # type: ignore[no-untyped-def]
    events = as_events(raw)
    per_user: dict[str, list[Engagement]] = defaultdict(list)
    for e in events:
        per_user[e.user_id].append(e)
    # A random merge of the per-user sequences, each user's own order kept.
    queues = {u: list(es) for u, es in per_user.items()}
    merged: list[Engagement] = []
    while queues:
        u = rnd.choice(sorted(queues))
        merged.append(queues[u].pop(0))
        if not queues[u]:
            del queues[u]
    assert states_of(merged) == states_of(events)


def test_sampling_is_proportional_to_importance_and_without_replacement() -> None:
    state = InterestClusters(InterestConfig(recluster_every=0, decay_per_day=0.0))
    basis = np.eye(3, dtype=np.float32)
    n = 0
    for cluster, count in enumerate([6, 3, 1]):
        for _ in range(count):
            state.learn_one(ev(n, f"c{cluster}-{n}", T0 + n), basis[cluster])
            n += 1
    rng = np.random.default_rng(0)
    firsts: dict[str, int] = defaultdict(int)
    for _ in range(3000):
        picks = state.sample_medoids(2, state.last_ts, rng)
        assert len({p.medoid for p in picks}) == 2
        firsts[max(picks, key=lambda p: p.importance).medoid[:2]] += 1
    top1 = state.sample_medoids(1, state.last_ts, np.random.default_rng(1))
    assert len(top1) == 1
    counts = defaultdict(int)
    for _ in range(3000):
        counts[state.sample_medoids(1, state.last_ts, rng)[0].medoid[:2]] += 1
    assert counts["c0"] / 3000 == pytest.approx(0.6, abs=0.04)
    assert counts["c1"] / 3000 == pytest.approx(0.3, abs=0.04)
    assert len(state.sample_medoids(10, state.last_ts, rng)) == 3

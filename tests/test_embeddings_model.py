"""Collaborative item embeddings (``streams.embeddings``): exact co-engagement counts, the window
and the decay, and a refit whose nearest neighbours are the co-engaged items."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from streams.embeddings.coengagement import CoEngagement
from streams.embeddings.config import CoEngagementConfig, RefitConfig
from streams.embeddings.refit import ItemEmbedding, ppmi

DAY = 86_400_000


def _dense(model: CoEngagement) -> dict[tuple[str, str], float]:
    c = model.cooccurrence()
    m = c.matrix.toarray()
    return {
        (a, b): float(m[i, j])
        for i, a in enumerate(c.item_ids)
        for j, b in enumerate(c.item_ids)
        if m[i, j]
    }


def test_counts_are_exact_on_a_tiny_log() -> None:
    model = CoEngagement(CoEngagementConfig(window=10, half_life_days=math.inf))
    for user, item, ts in [
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u1", "c", 3),
        ("u2", "a", 4),
        ("u2", "b", 5),
        ("u2", "a", 6),  # a repeat pairs with b again, never with itself
        ("u3", "d", 7),  # alone: no pair
    ]:
        model.learn_one(user, item, ts)
    assert _dense(model) == {
        ("a", "b"): 3.0,
        ("b", "a"): 3.0,
        ("a", "c"): 1.0,
        ("c", "a"): 1.0,
        ("b", "c"): 1.0,
        ("c", "b"): 1.0,
    }
    c = model.cooccurrence()
    assert (c.item_ids, c.events, c.as_of_ts) == (["a", "b", "c", "d"], 7, 7)


def test_weights_multiply_and_consolidation_changes_nothing() -> None:
    log = [("u1", "a", 1, 2.0), ("u1", "b", 2, 3.0), ("u1", "c", 3, 0.5)]
    no_decay = CoEngagementConfig(half_life_days=math.inf)
    once = CoEngagement(dataclasses.replace(no_decay, consolidate_every=1_000))
    often = CoEngagement(dataclasses.replace(no_decay, consolidate_every=1))
    for user, item, ts, w in log:
        once.learn_one(user, item, ts, w)
        often.learn_one(user, item, ts, w)
    assert _dense(once) == _dense(often)
    assert _dense(once)[("a", "b")] == 6.0
    assert _dense(once)[("b", "c")] == 1.5
    assert _dense(once)[("a", "c")] == 1.0


def test_the_window_bounds_pairs_by_count_and_by_age() -> None:
    by_count = CoEngagement(CoEngagementConfig(window=2, half_life_days=math.inf))
    for i, item in enumerate("abcd"):
        by_count.learn_one("u", item, i)
    # d pairs with b and c only (the last 2), c with a and b, b with a.
    assert sorted(k for k in _dense(by_count) if k[0] < k[1]) == [
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("b", "d"),
        ("c", "d"),
    ]
    by_age = CoEngagement(CoEngagementConfig(window=10, window_days=1.0, half_life_days=math.inf))
    by_age.learn_one("u", "a", 0)
    by_age.learn_one("u", "b", DAY // 2)
    by_age.learn_one("u", "c", 2 * DAY)  # more than a day after a and b: pairs with neither
    by_age.learn_one("u", "d", 2 * DAY + 1)
    assert sorted(k for k in _dense(by_age) if k[0] < k[1]) == [("a", "b"), ("c", "d")]
    assert by_age.n_users == 1
    by_age.learn_one("v", "a", 5 * DAY)
    by_age.consolidate()  # u is idle for more than window_days: their window is forgotten
    assert by_age.n_users == 1


def test_pairs_decay_with_their_age() -> None:
    model = CoEngagement(CoEngagementConfig(half_life_days=10.0, window_days=math.inf))
    model.learn_one("u1", "a", 0)
    model.learn_one("u1", "b", 0)  # (a, b) made at day 0
    model.learn_one("u2", "c", 20 * DAY)
    model.learn_one("u2", "d", 20 * DAY)  # (c, d) made at day 20: as of now, 4x (a, b)
    d = _dense(model)
    assert d[("c", "d")] == pytest.approx(1.0)
    assert d[("a", "b")] == pytest.approx(0.25)
    # A late event counts for what it is worth as of the newest event.
    model.learn_one("u3", "e", 10 * DAY)
    model.learn_one("u3", "f", 10 * DAY)
    assert _dense(model)[("e", "f")] == pytest.approx(0.5)


def test_decay_survives_rebasing_and_drops_negligible_entries() -> None:
    model = CoEngagement(CoEngagementConfig(half_life_days=1.0, min_weight=1e-3))
    assert model.config.window_days == 7.0  # the default: users idle for a week are forgotten
    model.learn_one("u1", "a", 0)
    model.learn_one("u1", "b", 0)
    model.learn_one("u2", "c", 45 * DAY)  # past the 40 half-lives that trigger a rebase
    model.learn_one("u2", "d", 45 * DAY)
    model.learn_one("u3", "e", 100 * DAY)
    model.learn_one("u3", "f", 100 * DAY)
    d = _dense(model)
    assert d == {("e", "f"): pytest.approx(1.0), ("f", "e"): pytest.approx(1.0)}
    assert model.nnz == 2  # (a, b) and (c, d) decayed below min_weight and are gone
    assert model.n_users == 1  # u1 and u2, idle for more than window_days, are forgotten


def test_bad_weights_are_refused() -> None:
    model = CoEngagement()
    for w in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="weight"):
            model.learn_one("u", "a", 0, w)
    assert model.events == 0


def test_ppmi_matches_its_definition() -> None:
    c = np.array([[0, 4, 1], [4, 0, 1], [1, 1, 0]], dtype=np.float64)
    got = ppmi(c, shift=1.0, alpha=1.0).toarray()
    r = c.sum(axis=1)
    with np.errstate(divide="ignore"):
        want = np.maximum(np.log(c * r.sum() / np.outer(r, r)), 0.0)
    np.testing.assert_allclose(got, want)
    assert got[0, 1] == pytest.approx(math.log(4 * 12 / 25))
    assert got[0, 2] == pytest.approx(math.log(12 / 10))
    assert ppmi(c, shift=2.0, alpha=1.0).toarray()[0, 2] == 0.0  # log(1.2) - log(2) < 0
    # Context smoothing raises the context side's counts to alpha: r = (5, 5, 2).
    smooth = ppmi(c, alpha=0.5).toarray()
    norm = 2 * math.sqrt(5) + math.sqrt(2)
    assert smooth[0, 1] == pytest.approx(math.log(4 * norm / (5 * math.sqrt(5))))
    assert smooth[2, 0] == pytest.approx(math.log(1 * norm / (2 * math.sqrt(5))))
    assert smooth[0, 2] == 0.0  # smoothing lifts rare item 2 as a context: its PMI drops below 0


def _two_communities(seed: int = 0, users: int = 60, per_user: int = 6) -> CoEngagement:
    """Users who each engage within one of two item groups (a0..a9 or b0..b9)."""
    rng = np.random.default_rng(seed)
    model = CoEngagement(CoEngagementConfig(window=10))
    ts = 0
    for u in range(users):
        group = "ab"[u % 2]
        for i in rng.choice(10, per_user, replace=False):
            ts += 1
            model.learn_one(f"u{u}", f"{group}{i}", ts)
    model.learn_one("lonely", "z", ts + 1)  # never co-engaged: no vector
    return model


def test_refit_puts_co_engaged_items_nearest() -> None:
    stats = _two_communities().cooccurrence()
    emb = ItemEmbedding(RefitConfig(rank=4)).fit(stats)
    assert len(emb) == 20 and emb.dim == 4 and "z" not in emb
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, rtol=1e-5)
    for group in "ab":
        for i in range(10):
            neighbours = emb.similar_items(f"{group}{i}", k=9)
            assert len(neighbours) == 9
            assert {n[0][0] for n in neighbours} == {group}, (group, i, neighbours)
    assert emb.similar_items("z") == []
    found, vecs = emb.item_vectors(["a1", "z", "b2"])
    assert found == ["a1", "b2"] and vecs.shape == (2, 4)
    aligned = emb.aligned(["a1", "z", "b2"])
    np.testing.assert_array_equal(aligned[1], 0.0)
    np.testing.assert_array_equal(aligned[[0, 2]], vecs)


def test_the_sparse_fit_agrees_with_the_dense_one_and_is_deterministic() -> None:
    """A catalogue big enough for ARPACK: its neighbours are the dense SVD's."""
    rng = np.random.default_rng(1)
    model = CoEngagement(CoEngagementConfig(window=20))
    ts = 0
    for u in range(400):
        group = u % 8
        for i in rng.choice(25, 8, replace=False):
            ts += 1
            model.learn_one(f"u{u}", f"g{group}-{i}", ts)
    stats = model.cooccurrence()
    assert len(stats.item_ids) == 200
    sparse = ItemEmbedding(RefitConfig(rank=8)).fit(stats)
    again = ItemEmbedding(RefitConfig(rank=8)).fit(stats)
    np.testing.assert_array_equal(sparse.vectors, again.vectors)
    # The dense SVD's vectors, U S^0.5 with unit rows: the same cosines (signs and rotations
    # inside equal singular values do not change a Gram matrix).
    u, s, _ = np.linalg.svd(ppmi(stats.matrix).toarray())
    x = u[:, :8] * np.sqrt(s[:8])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = [stats.item_ids.index(i) for i in sparse.item_ids]
    np.testing.assert_allclose(
        sparse.vectors @ sparse.vectors.T, (x @ x.T)[np.ix_(order, order)], atol=1e-4
    )
    for item in ("g0-3", "g5-7"):
        group = item.split("-")[0]
        assert {n.split("-")[0] for n, _ in sparse.similar_items(item, 24)} == {group}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    emb = ItemEmbedding(RefitConfig(rank=3, shift=1.5, alpha=0.9)).fit(
        _two_communities().cooccurrence()
    )
    path = tmp_path / "vectors.npz"
    emb.save(path)
    back = ItemEmbedding.load(path)
    assert back.item_ids == emb.item_ids
    assert back.config == emb.config
    assert (back.as_of_ts, back.events) == (emb.as_of_ts, emb.events) == (361, 361)
    np.testing.assert_array_equal(back.vectors, emb.vectors)
    assert back.similar_items("a3", 5) == emb.similar_items("a3", 5)

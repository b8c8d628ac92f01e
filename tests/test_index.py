"""ItemIndex (HNSW) and ExactIndex: recall, upsert/delete semantics, growth, search options.

Vectors are 64-d here (not the encoders' 384) to keep the suite fast; the benchmark
(bench/index.py) measures recall and speed at 100k x 384.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from serving.datasets.vectors import clustered_unit_vectors
from stores import ExactIndex, ItemIndex, Neighbor, normalize_rows
from stores.index import _VectorIndex

DIM = 64
AnyIndex = _VectorIndex  # the shared interface both classes implement

MAKERS: dict[str, Callable[..., AnyIndex]] = {
    "hnsw-2copies": lambda **kw: ItemIndex(DIM, copies=2, **kw),
    "hnsw-1copy": lambda **kw: ItemIndex(DIM, copies=1, **kw),
    "exact": lambda **kw: ExactIndex(DIM, **kw),
}


@pytest.fixture(params=list(MAKERS))
def make_index(request: pytest.FixtureRequest) -> Callable[..., AnyIndex]:
    return MAKERS[request.param]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return normalize_rows(rng.standard_normal((n, dim)))


def stored(index: AnyIndex, item_id: str) -> np.ndarray:
    vector = index.vector(item_id)
    assert vector is not None, f"{item_id} is not in the index"
    return vector


def hit_ids(hits: list[Neighbor]) -> list[str]:
    return [h.item_id for h in hits]


@pytest.fixture(scope="module")
def catalog_20k() -> tuple[list[str], np.ndarray, np.ndarray]:
    vectors, _ = clustered_unit_vectors(20_000 + 300, DIM, clusters=200, seed=3)
    ids = [f"item-{i}" for i in range(20_000)]
    return ids, vectors[:20_000], vectors[20_000:]


def test_recall_at_10_vs_exact_on_20k_clustered_vectors(
    catalog_20k: tuple[list[str], np.ndarray, np.ndarray],
) -> None:
    ids, vectors, queries = catalog_20k
    hnsw = ItemIndex(DIM, num_threads=2, initial_capacity=4096)
    exact = ExactIndex(DIM)
    hnsw.upsert(ids, vectors)
    exact.upsert(ids, vectors)
    assert len(hnsw) == len(exact) == 20_000

    got = hnsw.knn_batch(queries, 10)
    truth = exact.knn_batch(queries, 10)
    recall = np.mean(
        [len(set(hit_ids(g)) & set(hit_ids(t))) / 10 for g, t in zip(got, truth, strict=True)]
    )
    assert recall >= 0.95, f"recall@10 {recall:.3f} at ef={hnsw.ef}"


def test_hits_are_ids_with_cosine_scores_best_first(make_index: Callable[..., AnyIndex]) -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((300, DIM)) * 5.0  # not unit length: the index normalizes
    index = make_index()
    index.upsert([f"v{i}" for i in range(300)], raw)
    query = rng.standard_normal(DIM)

    hits = index.knn(query, 5)

    assert all(isinstance(h, Neighbor) for h in hits)
    cosines = normalize_rows(raw) @ (query / np.linalg.norm(query))
    best = np.argsort(-cosines)[:5]
    assert hit_ids(hits) == [f"v{i}" for i in best]
    np.testing.assert_allclose([h.score for h in hits], cosines[best], atol=1e-5)


def test_batch_query_matches_one_at_a_time(make_index: Callable[..., AnyIndex]) -> None:
    rng = np.random.default_rng(1)
    index = make_index()
    index.upsert([f"v{i}" for i in range(500)], unit(rng, 500))
    queries = unit(rng, 20)

    batch = index.knn_batch(queries, 7)

    assert index.knn(queries, 7) == batch  # a 2-D query is a batch
    singles = [index.knn(q, 7) for q in queries]
    assert [hit_ids(b) for b in batch] == [hit_ids(s) for s in singles]
    batch_scores = [[h.score for h in b] for b in batch]
    np.testing.assert_allclose(batch_scores, [[h.score for h in s] for s in singles], atol=1e-5)


def test_upsert_of_a_known_id_replaces_its_vector(make_index: Callable[..., AnyIndex]) -> None:
    vectors, cluster = clustered_unit_vectors(2000, DIM, clusters=20, seed=2)
    index = make_index()
    index.upsert([f"v{i}" for i in range(2000)], vectors)
    moved = "v0"
    home, away = cluster[0], (cluster[0] + 1) % 20
    away_member = int(np.flatnonzero(cluster == away)[0])
    new_vector = vectors[away_member] + 0.05 * unit(np.random.default_rng(2), 1)[0]

    index.upsert(moved, new_vector)

    assert len(index) == 2000
    np.testing.assert_allclose(stored(index, moved), normalize_rows(new_vector[None])[0], atol=1e-6)
    assert moved in hit_ids(index.knn(vectors[away_member], 3))  # found by its new neighbours
    home_member = int(np.flatnonzero(cluster == home)[1])
    assert moved not in hit_ids(index.knn(vectors[home_member], 50))  # gone from the old ones


def test_duplicate_ids_in_one_batch_keep_the_last_vector(
    make_index: Callable[..., AnyIndex],
) -> None:
    rng = np.random.default_rng(3)
    first, last = unit(rng, 2)
    index = make_index()
    index.upsert(["a", "b", "a"], np.stack([first, unit(rng, 1)[0], last]))
    assert len(index) == 2
    np.testing.assert_allclose(stored(index, "a"), last, atol=1e-6)


def test_a_deleted_item_is_never_returned_again(make_index: Callable[..., AnyIndex]) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 400)
    ids = [f"v{i}" for i in range(400)]
    index = make_index()
    index.upsert(ids, vectors)

    assert index.delete(ids[:100]) == 100
    assert index.delete(["v0", "never-seen"]) == 0

    gone = set(ids[:100])
    assert len(index) == 300 and gone.isdisjoint(index.ids())
    assert index.vector("v0") is None and "v0" not in index
    for k in (1, 10, 60, 300, 1000):  # graph search, over-fetch and full scan paths
        for hits in index.knn_batch(vectors[:100], k):
            assert gone.isdisjoint(hit_ids(hits))
            assert len(hits) == min(k, 300)

    index.upsert("v0", vectors[0])  # upserting it anew brings it back
    assert index.knn(vectors[0], 1)[0].item_id == "v0"


def test_deleted_slots_are_reused_before_growing() -> None:
    rng = np.random.default_rng(5)
    index = ItemIndex(DIM, initial_capacity=64)
    index.upsert([f"old{i}" for i in range(64)], unit(rng, 64))
    index.delete([f"old{i}" for i in range(20)])

    index.upsert([f"new{i}" for i in range(20)], unit(rng, 20))

    assert index.capacity == 64  # the 20 new items took the deleted slots
    assert len(index) == 64
    index.upsert("new0", unit(rng, 1)[0])  # a replacement when full reuses its own old slot
    assert index.capacity == 64 and len(index) == 64
    index.upsert("one-more", unit(rng, 1)[0])
    assert index.capacity == 128


@pytest.mark.parametrize("copies", [1, 2])
def test_grows_by_doubling_past_the_initial_capacity(copies: int) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 1500)
    ids = [f"v{i}" for i in range(1500)]
    index = ItemIndex(DIM, initial_capacity=8, copies=copies)
    for start, size in ((0, 1), (1, 7), (8, 1), (9, 300), (309, 1191)):
        index.upsert(ids[start : start + size], vectors[start : start + size])
        assert index.capacity >= len(index) == start + size
    assert index.capacity == 2048  # 8 doubled until 1500 fit
    top1 = [hits[0].item_id for hits in index.knn_batch(vectors, 1)]
    assert np.mean([t == i for t, i in zip(top1, ids, strict=True)]) >= 0.99


def test_knn_pairs_are_the_same_hits_as_plain_tuples(
    make_index: Callable[..., AnyIndex],
) -> None:
    rng = np.random.default_rng(2)
    index = make_index()
    index.upsert([f"v{i}" for i in range(300)], unit(rng, 300))
    queries = unit(rng, 5)

    pairs = index.knn_pairs(queries, 6, exclude={"v1", "v2"})

    neighbors = index.knn_batch(queries, 6, exclude={"v1", "v2"})
    assert pairs == [[(h.item_id, h.score) for h in row] for row in neighbors]
    assert all(type(h) is tuple for row in pairs for h in row)


def test_exclude_and_filter_still_return_k_valid_items(
    make_index: Callable[..., AnyIndex],
) -> None:
    vectors, _ = clustered_unit_vectors(3000, DIM, clusters=30, seed=7)
    ids = [f"v{i}" for i in range(3000)]
    index = make_index()
    index.upsert(ids, vectors)
    exact = ExactIndex(DIM)
    exact.upsert(ids, vectors)
    query = vectors[10]
    nearest_50 = set(hit_ids(exact.knn(query, 50)))
    even = lambda item_id: int(item_id[1:]) % 2 == 0  # noqa: E731

    hits = index.knn(query, 10, exclude=nearest_50, filter=even)

    assert len(hits) == 10
    assert nearest_50.isdisjoint(hit_ids(hits))
    assert all(even(i) for i in hit_ids(hits))
    truth = [i for i in hit_ids(exact.knn(query, 200)) if i not in nearest_50 and even(i)][:10]
    assert len(set(hit_ids(hits)) & set(truth)) >= 9
    assert index.knn(query, 5, filter=lambda _: False) == []  # nothing passes: nothing back


def test_k_larger_than_the_catalog_returns_everything(make_index: Callable[..., AnyIndex]) -> None:
    rng = np.random.default_rng(8)
    index = make_index()
    assert index.knn(unit(rng, 1)[0], 5) == []
    index.upsert(["a", "b", "c"], unit(rng, 3))
    hits = index.knn(unit(rng, 1)[0], 10)
    assert sorted(hit_ids(hits)) == ["a", "b", "c"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bad_input_is_rejected_and_nothing_is_written(
    make_index: Callable[..., AnyIndex],
) -> None:
    rng = np.random.default_rng(9)
    index = make_index()
    batch = unit(rng, 3)
    batch[1] = 0.0
    with pytest.raises(ValueError, match="zero or not finite"):
        index.upsert(["a", "b", "c"], batch)
    batch[1] = np.nan
    with pytest.raises(ValueError, match="zero or not finite"):
        index.upsert(["a", "b", "c"], batch)
    assert len(index) == 0
    with pytest.raises(ValueError, match="shape"):
        index.upsert(["a"], unit(rng, 1, dim=DIM + 1))
    with pytest.raises(ValueError, match="shape"):
        index.upsert(["a", "b"], unit(rng, 1))
    with pytest.raises(TypeError, match="strings"):
        index.upsert([7], unit(rng, 1))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="shape"):
        index.knn(np.ones(DIM + 1), 3)
    with pytest.raises(ValueError, match="k must be"):
        index.knn(np.ones(DIM), -1)


def test_version_moves_with_every_write() -> None:
    rng = np.random.default_rng(10)
    index = ItemIndex(DIM)
    seen = [index.version]
    index.upsert(["a", "b"], unit(rng, 2))
    seen.append(index.version)
    index.delete("a")
    seen.append(index.version)
    index.delete("a")  # nothing removed: no change
    seen.append(index.version)
    index.ef = 100
    seen.append(index.version)
    assert seen == sorted(seen) and len(set(seen)) == 4


def test_a_per_call_ef_widens_the_search_without_changing_the_default(
    catalog_20k: tuple[list[str], np.ndarray, np.ndarray],
) -> None:
    ids, vectors, queries = catalog_20k
    index = ItemIndex(DIM, ef=10, M=8, num_threads=2)
    index.upsert(ids[:5000], vectors[:5000])
    exact = ExactIndex(DIM)
    exact.upsert(ids[:5000], vectors[:5000])
    truth = exact.knn_batch(queries, 10)

    def recall(results: list[list[Neighbor]]) -> float:
        pairs = zip(results, truth, strict=True)
        return float(np.mean([len(set(hit_ids(r)) & set(hit_ids(t))) / 10 for r, t in pairs]))

    narrow = recall(index.knn_batch(queries, 10))
    wide = recall(index.knn_batch(queries, 10, ef=300))
    assert wide > narrow and wide >= 0.99
    assert index.ef == 10 and recall(index.knn_batch(queries, 10)) == narrow

"""Quality replay: the whole protocol on a small slice, no leakage from the future, metrics."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from serving.datasets.generated import generate
from serving.datasets.movielens import GENRES, MovieLensUnavailable, load_movielens
from serving.evaluation import (
    Action,
    EvalSettings,
    LastItem,
    MeanEmbedding,
    MedoidQuery,
    PinnerSage,
    Popularity,
    Protocol_,
    ReplayData,
    ReplayMethod,
    ReplayResult,
    ScoreQuery,
    VectorQuery,
    evaluate,
    method_suite,
    recall_curve,
    replay_data,
    run_eval,
    write_reports,
)
from serving.evaluation.metrics import metrics
from streams.interests import DAY_MS
from streams.schemas import Engagement, Item


def _content_vectors(items: list[Item], dim: int = 64) -> np.ndarray:
    """Content embeddings without the neural encoder (fast): category and tags one-hot by hash,
    plus a small per-item component so that every item is distinct."""
    v = np.zeros((len(items), dim), dtype=np.float32)
    for row, it in enumerate(items):
        for j, name in enumerate([it.category or "", *it.tags]):
            v[row, zlib.crc32(name.encode()) % (dim - 8)] += 2.0 if j == 0 else 1.0
        v[row, dim - 8 + zlib.crc32(it.item_id.encode()) % 8] += 0.5
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _slice() -> tuple[str, list[Item], list[Engagement], float | None]:
    """60 users of MovieLens 100k when it is cached, else the generated data."""
    try:
        ml = load_movielens(fetch=False)
    except MovieLensUnavailable:
        g = generate(users=60, items=400, events=4000, seed=3)
        return "generated", g.items, g.engagements, None
    users = {f"u{i}" for i in range(1, 61)}
    return "movielens-100k", ml.items, [e for e in ml.ratings if e.user_id in users], 4.0


@pytest.fixture(scope="module")
def small() -> ReplayData:
    name, items, events, threshold = _slice()
    return replay_data(name, items, _content_vectors(items), events, positive_min_weight=threshold)


def _suite(data: ReplayData) -> list[ReplayMethod]:
    return method_suite(data.vectors, EvalSettings().engine, 0.01, ablations=True, seed=0)


def test_the_whole_protocol_runs_on_a_small_slice_and_writes_reports(
    small: ReplayData, tmp_path: Path
) -> None:
    assert GENRES  # the slice's items carry genres (or generated topics) as category and tags
    result = evaluate(small, _suite(small), Protocol_(max_k=50))
    n = len(result.event_ids)
    assert n > 50
    expected = {"popularity", "last_item", "mean_embedding", "pinnersage", "pinnersage_sample3"}
    expected |= {"pinnersage_1", "pinnersage_5", "pinnersage_centroid"}
    expected |= {"pinnersage_lambda_0", "pinnersage_lambda_0.1"}
    assert set(result.ranks) == expected
    for name, ranks in result.ranks.items():
        assert ranks.shape == (n,) and ranks.min() >= 0 and ranks.max() <= 50, name
        top = result.top[name]
        # Lists are full, duplicate-free, and never hold an item the user engaged with before.
        assert (top >= 0).all(), name
        assert all(len(set(row)) == 50 for row in top.tolist()), name
    per_method, diffs = metrics(result, 20, bootstrap=200, pairs=[("pinnersage", "mean_embedding")])
    for name, est in per_method.items():
        curve = recall_curve(result, name)
        assert curve == sorted(curve) and abs(curve[19] - est["recall_at_k"].value) < 1e-12
        assert est["recall_at_k"].lo <= est["recall_at_k"].value <= est["recall_at_k"].hi
        assert 0 <= est["ndcg_at_k"].value <= est["recall_at_k"].value
    assert set(diffs) == {"pinnersage - mean_embedding"}


def test_no_method_sees_a_test_event_before_it_is_scored(small: ReplayData) -> None:
    position = {e.event_id: i for i, e in enumerate(small.events)}
    log: list[tuple[str, str, str]] = []
    result = evaluate(
        small,
        _suite(small),
        on_learn=lambda name, eid: log.append(("learn", name, eid)),
        on_score=lambda eid: log.append(("score", "", eid)),
    )
    scored = [eid for kind, _, eid in log if kind == "score"]
    assert scored and scored == list(result.event_ids)  # every test event, once, in order
    newest_learned = -1
    learned: set[str] = set()
    for kind, _, eid in log:
        if kind == "learn":
            newest_learned = max(newest_learned, position[eid])
            learned.add(eid)
        else:
            # Everything any method learned so far happened strictly before this event.
            assert eid not in learned
            assert newest_learned < position[eid]


def test_the_future_cannot_change_a_score_poisoned_future(small: ReplayData) -> None:
    """Ranks up to a cut are identical whether or not the rest of the log exists, even when the
    rest is replaced by a burst of engagements with the very items being tested."""
    full = evaluate(small, _suite(small))
    cut = int(len(small.events) * 0.9)
    cut_ts = small.events[cut].ts
    head = [e for e in small.events if e.ts < cut_ts]
    # Every tested (user, item) pair, engaged again with the top rating right after the cut.
    poison = [
        Engagement(
            event_id=f"poison-{i}",
            user_id=full.user_ids[u],
            item_id=small.item_ids[t],
            action="rate",
            weight=5.0,
            ts=cut_ts,
        )
        for i, (u, t) in enumerate(zip(full.users.tolist(), full.targets.tolist(), strict=True))
    ]
    events = head + poison
    poisoned = ReplayData(
        small.name,
        small.item_ids,
        small.vectors,
        events,
        np.concatenate([small.positive[: len(head)], np.ones(len(poison), dtype=bool)]),
        np.ones(len(events)),
    )
    part = evaluate(poisoned, _suite(poisoned), Protocol_(split_ts=full.split_ts))
    n = sum(1 for eid in part.event_ids if not eid.startswith("poison"))
    assert n > 20
    for name in full.ranks:
        # pinnersage_sample3 draws from one seeded generator: it too must agree exactly.
        assert full.ranks[name][:n].tolist() == part.ranks[name][:n].tolist(), name
        assert full.top[name][:n].tolist() == part.top[name][:n].tolist(), name


def _result(ranks: dict[str, list[int]], users: list[int], top_k: int = 3) -> ReplayResult:
    n = len(users)
    tops = {
        name: np.array([[(i + j) % 10 for j in range(top_k)] for i in range(n)], dtype=np.int64)
        for name in ranks
    }
    return ReplayResult(
        dataset="hand",
        n_items=10,
        max_k=top_k,
        split_ts=0,
        event_ids=[f"e{i}" for i in range(n)],
        users=np.array(users),
        user_ids=[f"u{u}" for u in sorted(set(users))],
        targets=np.zeros(n, dtype=np.int64),
        ranks={name: np.array(r) for name, r in ranks.items()},
        top=tops,
        fallbacks=dict.fromkeys(ranks, 0),
    )


def test_metrics_match_their_definitions() -> None:
    # Four events of two users: ranks 1, beyond K, 2, 3 (K = 2).
    result = _result({"m": [1, 0, 2, 3], "n": [0, 0, 0, 0]}, users=[0, 0, 1, 1])
    per, diffs = metrics(result, 2, bootstrap=300, pairs=[("m", "n")])
    m = per["m"]
    assert m["recall_at_k"].value == pytest.approx(2 / 4)
    assert m["ndcg_at_k"].value == pytest.approx((1.0 + 1.0 / np.log2(3)) / 4)
    assert m["hit_rate_at_k"].value == pytest.approx(1.0)  # both users have a hit
    # Top-2 lists are items (i, i+1) for event i: items 0..4 -> 5 of 10.
    assert m["coverage_at_k"].value == pytest.approx(0.5)
    for metric in ("recall_at_k", "ndcg_at_k", "hit_rate_at_k", "coverage_at_k"):
        assert m[metric].lo <= m[metric].value <= m[metric].hi, metric
    assert per["n"]["recall_at_k"].value == 0.0
    assert diffs["m - n"]["recall_at_k"].lo > 0.0  # m beats n on every resample
    assert recall_curve(result, "m") == [0.25, 0.5, 0.75]


def test_popularity_decays_with_time() -> None:
    pop = Popularity(n_items=2, decay_per_day=0.1)
    pop.learn_one(Action("a", "u1", "i0", 0, 1.0, 0))
    pop.learn_one(Action("b", "u2", "i0", 0, 1.0, 1))
    pop.learn_one(Action("c", "u3", "i1", 1, 1.0, 30 * DAY_MS))  # one recent beats two old
    (q,) = pop.query("anyone", 30 * DAY_MS)
    assert isinstance(q, ScoreQuery) and q.scores[1] > q.scores[0]
    pop.learn_one(Action("d", "u3", "i0", 0, 1.0, 10_000 * DAY_MS))  # rescales, no overflow
    (q,) = pop.query("anyone", 10_000 * DAY_MS)
    assert isinstance(q, ScoreQuery) and np.isfinite(q.scores).all() and q.scores[0] > q.scores[1]


def test_personal_methods_follow_the_user() -> None:
    vectors = np.eye(4, dtype=np.float32)
    last, mean = LastItem(vectors), MeanEmbedding(vectors, decay_per_day=1.0)
    sage = PinnerSage(vectors, queries=[MedoidQuery("p", n=2)])
    for i, (item, day) in enumerate([(0, 0), (0, 0), (2, 5)]):
        action = Action(f"e{i}", "u", f"i{item}", item, 1.0, day * DAY_MS)
        for m in (last, mean, sage):
            m.learn_one(action)
    assert last.query("nobody", 0) == [None]
    (q,) = last.query("u", 5 * DAY_MS)
    assert isinstance(q, VectorQuery) and q.vectors[0].tolist() == vectors[2].tolist()
    (q,) = mean.query("u", 5 * DAY_MS)
    assert (
        isinstance(q, VectorQuery) and q.vectors[0][2] > q.vectors[0][0] > 0
    )  # the old pair decayed
    (q,) = sage.query("u", 5 * DAY_MS)
    assert isinstance(q, VectorQuery) and q.vectors.shape == (2, 4)  # two orthogonal interests


def test_run_eval_writes_markdown_json_and_plot(tmp_path: Path) -> None:
    settings = EvalSettings(
        dataset="generated",
        generated={"users": 30, "items": 200, "events": 1500},
        bootstrap=50,
        ablations=False,
    )
    g = generate(30, 200, 1500, seed=0)
    report, _ = run_eval(settings, vectors=_content_vectors(g.items), encoder="content vectors")
    paths = write_reports(report, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["dataset"] == "generated" and loaded["k"] == 20
    assert loaded["test_events"] == report["test_events"] > 0
    assert set(loaded["methods"]) >= {"popularity", "last_item", "mean_embedding", "pinnersage"}
    assert "| pinnersage |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_through_kafka_gives_the_same_numbers_as_the_in_process_engine() -> None:
    """`--through-kafka`: the PinnerSage states come from a real interests worker on the
    embedded broker; every rank of every method must equal the in-process replay's."""
    settings = EvalSettings(
        dataset="generated",
        generated={"users": 20, "items": 2000, "events": 1500},
        bootstrap=50,
        ablations=True,
    )
    g = generate(20, 2000, 1500, seed=0)
    vectors = _content_vectors(g.items)
    report, in_process = run_eval(settings, vectors=vectors, encoder="content vectors")
    kafka_settings = dataclasses.replace(settings, through_kafka=True)
    kafka_report, through_kafka = run_eval(kafka_settings, vectors=vectors, encoder="content")
    assert through_kafka.event_ids == in_process.event_ids and len(in_process.event_ids) > 100
    assert through_kafka.ranks.keys() == in_process.ranks.keys()
    for name, ranks in in_process.ranks.items():
        np.testing.assert_array_equal(through_kafka.ranks[name], ranks, err_msg=name)
        np.testing.assert_array_equal(through_kafka.top[name], in_process.top[name], err_msg=name)
    assert kafka_report["methods"] == report["methods"]
    assert kafka_report["settings"]["through_kafka"] is True


def test_coverage_intervals_hold_the_point_value() -> None:
    # 10 users, one event each, each the only one to see one of the 10 items: a resample
    # (about 63% of the distinct users) nearly always covers fewer items than all users do.
    result = _result({"m": [1] * 10}, users=list(range(10)), top_k=1)
    cov = metrics(result, 1, bootstrap=300)[0]["m"]["coverage_at_k"]
    assert cov.value == pytest.approx(1.0)
    assert cov.lo <= cov.value <= cov.hi

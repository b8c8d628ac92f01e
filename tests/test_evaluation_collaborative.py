"""The replay over collaborative item vectors: fit on the warm-up period, refit during the test
period without ever seeing an event before it is scored, and methods that move to a new space
without mixing versions."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from serving.datasets.generated import generate
from serving.datasets.movielens import MovieLensUnavailable, load_movielens
from serving.evaluation import (
    Action,
    CollaborativeVectors,
    EvalSettings,
    LastItem,
    Protocol_,
    ReplayData,
    VectorQuery,
    evaluate,
    replay_data,
    run_eval,
    write_reports,
)
from serving.evaluation.report import markdown
from serving.evaluation.run import CollaborativeSettings, collaborative_fit, collaborative_suite
from streams.embeddings.coengagement import CoEngagement
from streams.embeddings.config import CoEngagementConfig, RefitConfig
from streams.schemas import Engagement

SETTINGS = EvalSettings(
    item_vectors="collaborative",
    ablations=False,
    collaborative=CollaborativeSettings(
        coengagement=CoEngagementConfig(window=20, window_days=math.inf),
        refit=RefitConfig(rank=8),
        refresh_every=100,
        compare_text=False,
    ),
)


@pytest.fixture(scope="module")
def small() -> ReplayData:
    """40 users of MovieLens 100k when it is cached, else the generated data."""
    try:
        ml = load_movielens(fetch=False)
    except MovieLensUnavailable:
        g = generate(users=40, items=400, events=3000, seed=3)
        items, events, threshold = g.items, g.engagements, None
    else:
        users = {f"u{i}" for i in range(1, 41)}
        items, events = ml.items, [e for e in ml.ratings if e.user_id in users]
        threshold = 4.0
    vectors = np.ones((len(items), 1), dtype=np.float32)  # unused: every method is collaborative
    return replay_data("slice", items, vectors, events, positive_min_weight=threshold)


def _split(data: ReplayData) -> int:
    first, last = data.events[0].ts, data.events[-1].ts
    return int(first + 0.8 * (last - first))


def test_refreshed_vectors_cannot_see_the_future_poisoned_future(small: ReplayData) -> None:
    """Ranks of static and refreshed methods up to a cut are identical whether the rest of the
    log exists or is replaced by engagements with the very items being tested (which a refit
    that peeked would pull next to the users' histories)."""
    split_ts = _split(small)
    engine = SETTINGS.engine
    methods, info, refreshed = collaborative_suite(small, split_ts, SETTINGS, engine, None)
    full = evaluate(small, methods, Protocol_(split_ts=split_ts))
    assert refreshed is not None and refreshed.refits >= 3
    assert info["refresh_every"] == 100 and info["static_items_with_vector"] > 100
    cut = int(len(small.events) * 0.95)
    cut_ts = small.events[cut].ts
    head = [e for e in small.events if e.ts < cut_ts]
    poison = [
        Engagement(
            event_id=f"poison-{i}-{j}",
            user_id=f"poisoner{j}",
            item_id=small.item_ids[t],
            action="rate",
            weight=5.0,
            ts=cut_ts,
        )
        for j in range(3)
        for i, t in enumerate(full.targets.tolist())
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
    again, _, _ = collaborative_suite(poisoned, split_ts, SETTINGS, engine, None)
    part = evaluate(poisoned, again, Protocol_(split_ts=split_ts))
    n = sum(1 for eid in part.event_ids if not eid.startswith("poison"))
    assert n > 100
    for name in full.ranks:
        assert full.ranks[name][:n].tolist() == part.ranks[name][:n].tolist(), name
        assert full.top[name][:n].tolist() == part.top[name][:n].tolist(), name


def _event(i: int, user: str, item: str, ts: int) -> Engagement:
    return Engagement(event_id=f"e{i}", user_id=user, item_id=item, action="rate", ts=ts)


def _new_item_log() -> ReplayData:
    """Warm-up: 20 users, each within group a or group b. Test: 10 newcomers engage a0 then
    "new" (an item nobody engaged with before the split); last, "t" (a1, a2 in the warm-up)
    engages "new"."""
    items = [f"{g}{i}" for g in "ab" for i in range(6)] + ["new"]
    log: list[tuple[str, str]] = []
    for u in range(20):
        group = "ab"[u % 2]
        log += [(f"w{u}", f"{group}{(u + k) % 6}") for k in range(4)]
    log += [("t", "a1"), ("t", "a2")]
    warm = len(log)
    for u in range(10):
        log += [(f"n{u}", "a0"), (f"n{u}", "new")]
    log.append(("t", "new"))
    events = [_event(i, u, it, i if i < warm else 1000 + i) for i, (u, it) in enumerate(log)]
    return ReplayData(
        "hand",
        items,
        np.ones((len(items), 1), dtype=np.float32),
        events,
        np.ones(len(events), dtype=bool),
        np.ones(len(events)),
    )


def test_a_refit_brings_an_item_first_seen_in_the_test_period_into_the_space() -> None:
    data = _new_item_log()
    settings = dataclasses.replace(
        SETTINGS,
        collaborative=dataclasses.replace(
            SETTINGS.collaborative, refit=RefitConfig(rank=3), refresh_every=5
        ),
    )
    methods, info, refreshed = collaborative_suite(data, 1000, settings, settings.engine, None)
    result = evaluate(data, methods, Protocol_(split_ts=1000, max_k=5))
    assert info["static_items_with_vector"] == 12  # every item but "new"
    assert refreshed is not None and refreshed.refits == 4  # 21 test events, one every 5
    assert "new" in refreshed.embedding
    assert result.event_ids[-1] == "e102"  # t's "new" (82 warm-up events, 20 newcomers')
    for name in ("last_item", "mean_embedding", "pinnersage"):
        # Static: "new" has no vector, so it is never retrieved; refreshed: among group a.
        assert result.ranks[f"{name}_static"][-1] == 0, name
        assert 1 <= result.ranks[name][-1] <= 5, (name, result.ranks[name][-1])
    # "new" is in no static list at all, and in refreshed lists once it has a vector.
    new = data.item_ids.index("new")
    assert not (result.top["last_item_static"] == new).any()
    assert (result.top["last_item"] == new).any()


def test_a_version_switch_rebuilds_a_user_in_the_new_space() -> None:
    data = _new_item_log()
    stats = CoEngagement(CoEngagementConfig())
    static, _ = collaborative_fit(data, 1000, CollaborativeSettings(refit=RefitConfig(rank=3)))
    method = CollaborativeVectors(
        data.item_ids,
        static,
        lambda space: [LastItem(space)],
        stats=stats,
        refit=RefitConfig(rank=3),
        refit_every=3,
        start_ts=1000,
    )
    row = {item: i for i, item in enumerate(data.item_ids)}

    def learn(user: str, item: str, ts: int) -> None:
        method.learn_one(Action(f"{user}-{item}", user, item, row[item], 1.0, ts))

    learn("t", "a1", 1)
    learn("t", "new", 1001)  # no vector yet: logged, not applied
    (q,) = method.query("t", 1001)
    assert isinstance(q, VectorQuery) and q.catalogue is method.space
    np.testing.assert_array_equal(q.vectors[0], method.space[row["a1"]])
    for u in range(2):  # the third test event applied triggers the refit
        learn(f"n{u}", "new", 1002)
    assert method.version == 1 and method.space[row["new"]].any()
    # t's state is rebuilt from their log in the new space: its last item is now "new".
    (q,) = method.query("t", 1003)
    assert isinstance(q, VectorQuery) and q.catalogue is method.space
    np.testing.assert_array_equal(q.vectors[0], method.space[row["new"]])


def test_run_eval_reports_static_refreshed_and_text_side_by_side(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        SETTINGS,
        dataset="generated",
        generated={"users": 40, "items": 300, "events": 3000},
        bootstrap=50,
        collaborative=dataclasses.replace(SETTINGS.collaborative, compare_text=True),
    )
    g = generate(40, 300, 3000, seed=0)
    text = np.random.default_rng(0).standard_normal((len(g.items), 16)).astype(np.float32)
    report, result = run_eval(settings, vectors=text, encoder="random vectors")
    for m in ("last_item", "mean_embedding", "pinnersage"):
        assert {m, f"{m}_static", f"{m}_text"} <= set(result.ranks)
        assert f"{m} - {m}_static" in report["comparisons"]
        assert f"{m} - {m}_text" in report["comparisons"]
    assert report["collaborative"]["refits"] > 0
    assert report["collaborative"]["coengagement"]["window_days"] == "inf"
    assert report["encoder"].startswith("collaborative: rank-8 SVD of PPMI")
    assert report["encoder"].endswith("*_text methods: random vectors")
    paths = write_reports(report, tmp_path)
    json.loads(paths["json"].read_text())  # strict JSON: no Infinity
    md = paths["markdown"].read_text()
    assert "| pinnersage | " in md and "Static vs refreshed" in md


def test_warmup_only_replays_the_warm_up_period_alone() -> None:
    settings = dataclasses.replace(
        SETTINGS,
        dataset="generated",
        generated={"users": 40, "items": 300, "events": 3000},
        bootstrap=50,
        collaborative=dataclasses.replace(SETTINGS.collaborative, refresh_every=0),
    )
    full, _ = run_eval(settings)
    warm, _ = run_eval(dataclasses.replace(settings, warmup_only=True))
    assert warm["split_ts"] < full["split_ts"]
    assert warm["events"] < full["events"]
    assert warm["settings"]["warmup_only"] is True
    assert "Validation run (`--warmup-only`)" in markdown(warm)
    assert "Validation run" not in markdown(full)

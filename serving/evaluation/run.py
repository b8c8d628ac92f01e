"""``recstream eval``: load a dataset, embed its items, replay it through every method, measure.

This is the I/O side of the replay (``serving.evaluation.replay``, which stays pure): datasets,
the encoder and the method suite; ``serving.evaluation.report`` writes the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from serving.evaluation.data import ReplayData, replay_data
from serving.evaluation.methods import (
    EVAL_ENGINE_CONFIG,
    CapturedPinnerSage,
    LastItem,
    MeanEmbedding,
    MedoidQuery,
    PinnerSage,
    Popularity,
    ReplayMethod,
)
from serving.evaluation.metrics import METRICS, metrics, recall_curve
from serving.evaluation.replay import Protocol_, ReplayResult, evaluate
from streams.interests import DEFAULT_ACTION_WEIGHTS, InterestConfig
from streams.schemas import Engagement, Item

log = logging.getLogger(__name__)
DATASETS = ("movielens-100k", "generated")
PRIMARY = "pinnersage"
BASELINES = ("popularity", "last_item", "mean_embedding")


@dataclass(frozen=True)
class EvalSettings:
    """Everything ``run_eval`` needs; the defaults are the published protocol."""

    dataset: str = "movielens-100k"
    k: int = 20
    positive_min_rating: float = 4.0
    weight_by_rating: bool = False
    limit_users: int | None = None
    decay_per_day: float = 0.01  # lambda of popularity, mean embedding and the main engine
    engine: InterestConfig = EVAL_ENGINE_CONFIG
    ablations: bool = True
    bootstrap: int = 1000
    seed: int = 0
    split: float = 0.8
    max_k: int = 50
    encoder_variant: str = "fp32"
    head_epochs: int = 0  # > 0: fine-tune the encoder head on training-period co-engagement
    model_dir: Path | None = None
    data_dir: Path | None = None
    through_kafka: bool = False  # PinnerSage states from the real interests worker (slower)
    generated: dict[str, int] = field(
        default_factory=lambda: {"users": 200, "items": 2000, "events": 20_000}
    )


def load_dataset(settings: EvalSettings) -> tuple[list[Item], list[Engagement], float | None]:
    """Items, events and the positive threshold (None: every event is positive)."""
    if settings.dataset == "movielens-100k":
        from serving.datasets.movielens import load_movielens

        ml = load_movielens(settings.data_dir)
        return ml.items, ml.ratings, settings.positive_min_rating
    if settings.dataset == "generated":
        from serving.datasets.generated import generate

        g = generate(**settings.generated, seed=settings.seed)
        return g.items, g.engagements, None
    raise ValueError(f"unknown dataset {settings.dataset!r} (choose from {', '.join(DATASETS)})")


def embed_items(
    items: Sequence[Item], model_dir: Path | None = None, variant: str = "fp32"
) -> tuple[np.ndarray, str]:
    """(n, dim) unit embeddings from the project's encoder (exported on first use)."""
    from encoders.session import EncoderSession, default_model_dir, ensure_exported

    directory = model_dir or default_model_dir()
    ensure_exported(directory)
    session = EncoderSession(directory, variant=variant)
    return session.encode_items(items), f"{session.version} ({session.variant})"


def method_suite(
    vectors: np.ndarray,
    engine: InterestConfig,
    decay_per_day: float,
    *,
    ablations: bool = True,
    seed: int = 0,
    captured: tuple[Sequence[str], Mapping[str, bytes]] | None = None,
) -> list[ReplayMethod]:
    """The baselines, PinnerSage (top-3, sampled 3, 1 and 5 medoids) and the ablations.

    ``captured`` = (item ids, event id -> state blob): PinnerSage answers from the interests
    worker's states (``--through-kafka``) instead of running the engine in process.
    """

    def pinnersage(config: InterestConfig, queries: Sequence[MedoidQuery]) -> PinnerSage:
        if captured is None:
            return PinnerSage(vectors, config, queries, seed=seed)
        item_ids, states = captured
        return CapturedPinnerSage(vectors, item_ids, states, config, queries, seed=seed)

    main = engine.with_(decay_per_day=decay_per_day)
    queries = [MedoidQuery(PRIMARY, 3), MedoidQuery("pinnersage_sample3", 3, sample=True)]
    queries += [MedoidQuery("pinnersage_1", 1), MedoidQuery("pinnersage_5", 5)]
    if ablations:
        queries.append(MedoidQuery("pinnersage_centroid", 3, centroid=True))
    methods: list[ReplayMethod] = [
        Popularity(len(vectors), decay_per_day),
        LastItem(vectors),
        MeanEmbedding(vectors, decay_per_day),
        pinnersage(main, queries),
    ]
    if ablations:
        for lam in (0.0, 0.01, 0.1):
            if lam != decay_per_day:
                name = f"pinnersage_lambda_{lam:g}"
                config = engine.with_(decay_per_day=lam)
                # The decay only weighs clusters at query time: the same states serve every lambda.
                methods.append(pinnersage(config, [MedoidQuery(name, 3)]))
    return methods


def head_vectors(
    data: ReplayData, items: Sequence[Item], split_ts: int, epochs: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Item vectors through a head fit (``encoders.head``) to co-engagement *before* the split.

    Only positive engagements strictly before ``split_ts`` make pairs, so the test period
    never reaches the encoder. Returns the vectors and the number of training pairs.
    """
    from encoders.coengagement import coengagement_pairs
    from encoders.head import HeadConfig, apply_head, fit_head
    from encoders.records import Engagements
    from encoders.text import MAX_TAGS, category_ids, tag_ids

    cfg = HeadConfig(epochs=epochs, seed=seed)
    row = {item_id: i for i, item_id in enumerate(data.item_ids)}
    users = {u: i for i, u in enumerate(sorted({e.user_id for e in data.events}))}
    train = [
        e for e, pos in zip(data.events, data.positive, strict=True) if pos and e.ts < split_ts
    ]
    train.sort(key=lambda e: (users[e.user_id], e.ts))
    eng = Engagements(
        users=np.array([users[e.user_id] for e in train], dtype=np.int64),
        items=np.array([row[e.item_id] for e in train], dtype=np.int64),
        ts=np.array([e.ts for e in train], dtype=np.int64),
    )
    pairs = coengagement_pairs(
        eng, window=cfg.window, max_gap_ms=cfg.max_gap_ms, before_ts=split_ts
    )
    by_id = {it.item_id: it for it in items}
    ordered = [by_id[i] for i in data.item_ids]
    cats = category_ids([it.category for it in ordered], cfg.category_buckets)
    tags = tag_ids([it.tags for it in ordered], cfg.tag_buckets, MAX_TAGS)
    head, losses = fit_head(data.vectors, cats, tags, pairs, cfg)
    log.info("head: %d pairs, loss %.3f -> %.3f", len(pairs[0]), losses[0], losses[-1])
    return apply_head(head, data.vectors, cats, tags), len(pairs[0])


def _select_users(data: ReplayData, limit: int | None, seed: int) -> ReplayData:
    if limit is None:
        return data
    users = sorted({e.user_id for e in data.events})
    if limit >= len(users):
        return data
    rng = np.random.default_rng(seed)
    chosen = {users[i] for i in rng.choice(len(users), size=limit, replace=False)}
    return data.only_users(chosen)


def run_eval(
    settings: EvalSettings,
    *,
    vectors: np.ndarray | None = None,
    encoder: str | None = None,
) -> tuple[dict[str, Any], ReplayResult]:
    """Run the whole protocol; returns the report (JSON-ready) and the per-event result.

    ``vectors`` (one row per catalogue item) skips the encoder, e.g. to reuse embeddings.
    """
    t0 = time.perf_counter()
    items, events, positive_min = load_dataset(settings)
    if vectors is None:
        log.info("embedding %d items", len(items))
        vectors, encoder = embed_items(items, settings.model_dir, settings.encoder_variant)
    t_embed = time.perf_counter()
    action_weights = None
    if positive_min is None:  # implicit feedback: weigh by action when asked

        def action_weights(e: Engagement) -> float:
            return settings.engine.weight_of(e.action, e.weight)

    data = replay_data(
        settings.dataset,
        items,
        vectors,
        events,
        positive_min_weight=positive_min,
        weight_by_rating=settings.weight_by_rating,
        action_weights=action_weights,
    )
    data = _select_users(data, settings.limit_users, settings.seed)
    protocol = Protocol_(split=settings.split, max_k=settings.max_k)
    first, last = data.events[0].ts, data.events[-1].ts
    split_ts = int(first + settings.split * (last - first))
    head_pairs = 0
    if settings.head_epochs > 0:
        log.info(
            "fitting the encoder head on the training period (%d epochs)", settings.head_epochs
        )
        fitted, head_pairs = head_vectors(
            data, items, split_ts, settings.head_epochs, settings.seed
        )
        data = data.with_vectors(fitted)
        encoder = f"{encoder} + head fit on the training period ({head_pairs} pairs)"
    captured = None
    t_kafka_start = time.perf_counter()
    if settings.through_kafka:
        from serving.evaluation.through_kafka import capture_worker_states

        main = settings.engine.with_(decay_per_day=settings.decay_per_day)
        states = capture_worker_states(data, main, split_ts)
        captured = (data.item_ids, states)
    t_kafka = time.perf_counter()
    methods = method_suite(
        data.vectors,
        settings.engine,
        settings.decay_per_day,
        ablations=settings.ablations,
        seed=settings.seed,
        captured=captured,
    )
    log.info("replaying %d events through %d methods", len(data.events), len(methods))
    result = evaluate(data, methods, dataclasses.replace(protocol, split_ts=split_ts))
    t_replay = time.perf_counter()
    pairs = [(PRIMARY, b) for b in BASELINES]
    per_method, diffs = metrics(
        result, settings.k, bootstrap=settings.bootstrap, seed=settings.seed, pairs=pairs
    )
    used = settings.engine.with_(decay_per_day=settings.decay_per_day)
    engine = {f.name: getattr(used, f.name) for f in fields(used)}
    engine["action_weights"] = dict(used.action_weights)
    report: dict[str, Any] = {
        "dataset": settings.dataset,
        "users": len(np.unique(result.users)),
        "test_events": len(result.event_ids),
        "k": settings.k,
        "items": len(items),
        "events": len(data.events),
        "split_ts": result.split_ts,
        "counts": result.counts,
        "settings": {
            "positive_min_rating": positive_min,
            "weight_by_rating": settings.weight_by_rating,
            "limit_users": settings.limit_users,
            "decay_per_day": settings.decay_per_day,
            "split": settings.split,
            "bootstrap": settings.bootstrap,
            "seed": settings.seed,
            "min_history": 1,
            "head_epochs": settings.head_epochs,
            "head_pairs": head_pairs,
            "through_kafka": settings.through_kafka,
        },
        "engine": engine,
        "encoder": encoder,
        "methods": {
            name: {
                **{m: per_method[name][m].as_dict() for m in METRICS},
                "fallbacks": result.fallbacks[name],
                "recall_curve": recall_curve(result, name),
            }
            for name in result.ranks
        },
        "comparisons": {pair: {m: e.as_dict() for m, e in d.items()} for pair, d in diffs.items()},
        "seconds": {
            "embed": round(t_embed - t0, 2),
            "through_kafka": round(t_kafka - t_kafka_start, 2),
            "replay": round(t_replay - t_embed - (t_kafka - t_kafka_start), 2),
            "metrics": round(time.perf_counter() - t_replay, 2),
        },
    }
    return report, result


__all__ = [
    "DATASETS",
    "DEFAULT_ACTION_WEIGHTS",
    "EvalSettings",
    "embed_items",
    "load_dataset",
    "method_suite",
    "run_eval",
]

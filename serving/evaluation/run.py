"""``recstream eval``: load a dataset, embed its items, replay it through every method, measure.

This is the I/O side of the replay (``serving.evaluation.replay``, which stays pure): datasets,
the encoder and the method suite; ``serving.evaluation.report`` writes the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from serving.evaluation.data import ReplayData, replay_data
from serving.evaluation.methods import (
    CapturedPinnerSage,
    CollaborativeVectors,
    LastItem,
    MeanEmbedding,
    MedoidQuery,
    PinnerSage,
    Popularity,
    ReplayMethod,
)
from serving.evaluation.metrics import METRICS, metrics, recall_curve
from serving.evaluation.replay import Protocol_, ReplayResult, evaluate
from serving.evaluation.settings import (
    BASELINES,
    DATASETS,
    DEFAULT_HEAD_EPOCHS,
    ITEM_VECTORS,
    PRIMARY,
    VECTOR_METHODS,
    CollaborativeSettings,
    EvalSettings,
)
from streams.embeddings.coengagement import CoEngagement
from streams.embeddings.refit import ItemEmbedding
from streams.interests import DEFAULT_ACTION_WEIGHTS, InterestConfig
from streams.schemas import Engagement, Item

log = logging.getLogger(__name__)


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
    """Popularity, the vector baselines, PinnerSage (top-3, sampled 3, 1 and 5 medoids) and
    the ablations.

    ``captured`` = (item ids, event id -> state blob): PinnerSage answers from the interests
    worker's states (``--through-kafka``) instead of running the engine in process.
    """
    return [
        Popularity(len(vectors), decay_per_day),
        *vector_methods(
            vectors, engine, decay_per_day, ablations=ablations, seed=seed, captured=captured
        ),
    ]


def vector_methods(
    vectors: np.ndarray,
    engine: InterestConfig,
    decay_per_day: float,
    *,
    ablations: bool = True,
    seed: int = 0,
    captured: tuple[Sequence[str], Mapping[str, bytes]] | None = None,
    suffix: str = "",
    only_main: bool = False,
) -> list[ReplayMethod]:
    """The methods that search an item space: last item, mean embedding, PinnerSage.

    ``suffix`` is appended to every name; ``only_main`` keeps last item, mean embedding and
    PinnerSage top-3 (the comparison sets of another item space).
    """

    def pinnersage(config: InterestConfig, queries: Sequence[MedoidQuery]) -> PinnerSage:
        if captured is None:
            return PinnerSage(vectors, config, queries, seed=seed)
        item_ids, states = captured
        return CapturedPinnerSage(vectors, item_ids, states, config, queries, seed=seed)

    main = engine.with_(decay_per_day=decay_per_day)
    queries = [MedoidQuery(PRIMARY + suffix, 3)]
    if not only_main:
        queries += [MedoidQuery(f"pinnersage_sample3{suffix}", 3, sample=True)]
        queries += [MedoidQuery(f"pinnersage_1{suffix}", 1)]
        queries += [MedoidQuery(f"pinnersage_5{suffix}", 5)]
        if ablations:
            queries.append(MedoidQuery(f"pinnersage_centroid{suffix}", 3, centroid=True))
    methods: list[ReplayMethod] = [
        LastItem(vectors, name="last_item" + suffix),
        MeanEmbedding(vectors, decay_per_day, name="mean_embedding" + suffix),
        pinnersage(main, queries),
    ]
    if ablations and not only_main:
        for lam in (0.0, 0.01, 0.1):
            if lam != decay_per_day:
                name = f"pinnersage_lambda_{lam:g}{suffix}"
                config = engine.with_(decay_per_day=lam)
                # The decay only weighs clusters at query time: the same states serve every lambda.
                methods.append(pinnersage(config, [MedoidQuery(name, 3)]))
    return methods


def collaborative_fit(
    data: ReplayData, before_ts: int, settings: CollaborativeSettings
) -> tuple[ItemEmbedding, CoEngagement]:
    """The static collaborative fit: statistics of the positive events before ``before_ts``
    (fed in replay order, as the replay applies them), and the vectors fit to them."""
    stats = CoEngagement(settings.coengagement)
    for e, pos, w in zip(data.events, data.positive, data.weight, strict=True):
        if e.ts >= before_ts:
            break
        if pos:
            stats.learn_one(e.user_id, e.item_id, e.ts, float(w))
    return ItemEmbedding(settings.refit).fit(stats.cooccurrence()), stats


def collaborative_suite(
    data: ReplayData,
    split_ts: int,
    settings: EvalSettings,
    engine: InterestConfig,
    text_vectors: np.ndarray | None,
) -> tuple[list[ReplayMethod], dict[str, Any], CollaborativeVectors | None]:
    """Popularity; the vector methods on collaborative vectors refreshed during the test period
    (their plain names) and fit once on the warm-up period (``*_static``); with
    ``text_vectors``, the same methods on them (``*_text``). Returns the methods, what the
    report says about the collaborative space, and the refreshed methods (None if static)."""
    cs = settings.collaborative
    decay = settings.decay_per_day
    static, warm = collaborative_fit(data, split_ts, cs)
    refresh = cs.refresh_every

    def build(suffix: str, only_main: bool) -> Any:
        def make(space: np.ndarray) -> list[ReplayMethod]:
            return vector_methods(
                space,
                engine,
                decay,
                ablations=settings.ablations,
                seed=settings.seed,
                suffix=suffix,
                only_main=only_main,
            )

        return make

    methods: list[ReplayMethod] = [Popularity(len(data.item_ids), decay)]
    refreshed = None
    if refresh > 0:
        refreshed = CollaborativeVectors(
            data.item_ids,
            static,
            build("", False),
            stats=CoEngagement(cs.coengagement),
            refit=cs.refit,
            refit_every=refresh,
            start_ts=split_ts,
        )
        methods += [refreshed, CollaborativeVectors(data.item_ids, static, build("_static", True))]
    else:
        methods.append(CollaborativeVectors(data.item_ids, static, build("", False)))
    if text_vectors is not None:
        text_engine = settings.engine.with_(decay_per_day=decay)
        methods += vector_methods(
            text_vectors, text_engine, decay, seed=settings.seed, suffix="_text", only_main=True
        )
    info: dict[str, Any] = {
        "coengagement": dataclasses.asdict(cs.coengagement),
        "refit": dataclasses.asdict(cs.refit),
        "refresh_every": refresh,
        "merge_threshold": engine.merge_threshold,
        "static_items_with_vector": len(static),
        "static_fit_events": warm.events,
        "static_pairs_nnz": warm.nnz,
    }
    return methods, _json_safe(info), refreshed


def _json_safe(value: Any) -> Any:
    """Infinite settings (no window, no decay) as the string "inf": JSON has no infinity."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


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


def _collaborative_name(cs: CollaborativeSettings, text_encoder: str | None) -> str:
    c, r = cs.coengagement, cs.refit
    name = (
        f"collaborative: rank-{r.rank} SVD of PPMI (shift {r.shift:g}, alpha {r.alpha:g}, "
        f"S^{r.eig_power:g}) of co-engagement (last {c.window} positives within "
        f"{c.window_days:g} days, half-life {c.half_life_days:g} days), fit on the warm-up "
        "period"
    )
    if cs.refresh_every > 0:
        name += f", refit every {cs.refresh_every} applied events of the test period"
    if text_encoder is not None:
        name += f"; *_text methods: {text_encoder}"
    return name


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
    if settings.item_vectors not in ITEM_VECTORS:
        choices = ", ".join(ITEM_VECTORS)
        raise ValueError(f"unknown item vectors {settings.item_vectors!r} (choose from {choices})")
    collaborative = settings.item_vectors == "collaborative"
    if collaborative and settings.through_kafka:
        raise ValueError("--through-kafka replays the text or head vectors, not collaborative ones")
    head_epochs = settings.head_epochs
    if settings.item_vectors == "head" and head_epochs == 0:
        head_epochs = DEFAULT_HEAD_EPOCHS
    t0 = time.perf_counter()
    items, events, positive_min = load_dataset(settings)
    needs_text = not collaborative or settings.collaborative.compare_text
    if vectors is None and needs_text:
        log.info("embedding %d items", len(items))
        vectors, encoder = embed_items(items, settings.model_dir, settings.encoder_variant)
    text_vectors = vectors
    if vectors is None:  # collaborative without text: the replay's own vectors go unused
        vectors = np.ones((len(items), 1), dtype=np.float32)
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
    if settings.warmup_only:
        # Validation: the warm-up period alone, split the same way inside it.
        data = data.before(split_ts)
        first, last = data.events[0].ts, data.events[-1].ts
        split_ts = int(first + settings.split * (last - first))
    head_pairs = 0
    if head_epochs > 0:
        log.info("fitting the encoder head on the training period (%d epochs)", head_epochs)
        fitted, head_pairs = head_vectors(data, items, split_ts, head_epochs, settings.seed)
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
    engine = settings.engine
    collab_info: dict[str, Any] | None = None
    refreshed: CollaborativeVectors | None = None
    if collaborative:
        threshold = settings.collaborative.merge_threshold
        if threshold is not None:
            engine = engine.with_(merge_threshold=threshold)
        methods, collab_info, refreshed = collaborative_suite(
            data, split_ts, settings, engine, data.vectors if text_vectors is not None else None
        )
        encoder = _collaborative_name(
            settings.collaborative, encoder if text_vectors is not None else None
        )
    else:
        methods = method_suite(
            data.vectors,
            engine,
            settings.decay_per_day,
            ablations=settings.ablations,
            seed=settings.seed,
            captured=captured,
        )
    log.info("replaying %d events through %d methods", len(data.events), len(methods))
    result = evaluate(data, methods, dataclasses.replace(protocol, split_ts=split_ts))
    t_replay = time.perf_counter()
    if collab_info is not None:
        collab_info["refits"] = refreshed.refits if refreshed is not None else 0
    pairs = [(PRIMARY, b) for b in BASELINES]
    for suffix in ("_static", "_text"):
        pairs += [(m, m + suffix) for m in VECTOR_METHODS if m + suffix in result.ranks]
    per_method, diffs = metrics(
        result, settings.k, bootstrap=settings.bootstrap, seed=settings.seed, pairs=pairs
    )
    used = engine.with_(decay_per_day=settings.decay_per_day)
    engine_used = {f.name: getattr(used, f.name) for f in fields(used)}
    engine_used["action_weights"] = dict(used.action_weights)
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
            "item_vectors": settings.item_vectors,
            "warmup_only": settings.warmup_only,
            "head_epochs": head_epochs,
            "head_pairs": head_pairs,
            "through_kafka": settings.through_kafka,
        },
        "engine": engine_used,
        "encoder": encoder,
        "collaborative": collab_info,
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
    "ITEM_VECTORS",
    "CollaborativeSettings",
    "EvalSettings",
    "collaborative_fit",
    "collaborative_suite",
    "embed_items",
    "load_dataset",
    "method_suite",
    "run_eval",
    "vector_methods",
]

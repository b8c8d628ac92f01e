"""``recstream eval``: offline quality, PinnerSage against baselines (``serving.evaluation``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import setup_logging
from serving.evaluation.settings import DATASETS, ITEM_VECTORS, CollaborativeSettings, EvalSettings

_CS = CollaborativeSettings()


def eval_quality(
    dataset: Annotated[str, typer.Option(help=" or ".join(DATASETS))] = EvalSettings.dataset,
    k: Annotated[
        int, typer.Option(min=1, max=EvalSettings.max_k, help="K of Recall/NDCG/HitRate@K.")
    ] = EvalSettings.k,
    out: Annotated[Path, typer.Option(help="Directory for quality.md/json, recall_at_k.png.")] = (
        Path("reports")
    ),
    positive_min_rating: Annotated[
        float, typer.Option(help="Ratings >= this are positive engagements (MovieLens).")
    ] = EvalSettings.positive_min_rating,
    weight_by_rating: Annotated[
        bool, typer.Option("--weight-by-rating", help="Positives weigh their rating, not 1.")
    ] = EvalSettings.weight_by_rating,
    limit_users: Annotated[
        int | None, typer.Option(min=1, help="Replay only this many users (random, seeded).")
    ] = EvalSettings.limit_users,
    decay_per_day: Annotated[
        float, typer.Option(min=0.0, help="Lambda of every time decay (per day).")
    ] = EvalSettings.decay_per_day,
    merge_threshold: Annotated[
        float | None,
        typer.Option(
            help="Engine Ward merge threshold (default: the engine's for text vectors, "
            f"{_CS.merge_threshold} for collaborative ones; *_text methods keep the engine's)."
        ),
    ] = None,
    max_clusters: Annotated[int | None, typer.Option(min=1, help="Engine cluster cap.")] = None,
    window_days: Annotated[
        float, typer.Option(help="Engine action window (days).")
    ] = EvalSettings.engine.window_days,
    ablations: Annotated[
        bool, typer.Option(help="Centroid and lambda ablations.")
    ] = EvalSettings.ablations,
    bootstrap: Annotated[
        int, typer.Option(min=10, help="Bootstrap resamples.")
    ] = EvalSettings.bootstrap,
    seed: Annotated[int, typer.Option()] = EvalSettings.seed,
    variant: Annotated[
        str, typer.Option(help="Encoder variant: fp32, int8 or auto.")
    ] = EvalSettings.encoder_variant,
    model_dir: Annotated[
        Path | None, typer.Option(help="Exported encoder directory.")
    ] = EvalSettings.model_dir,
    head_epochs: Annotated[
        int,
        typer.Option(
            min=0, help="Fit the encoder head on training-period co-engagement (epochs; 0 = no)."
        ),
    ] = EvalSettings.head_epochs,
    item_vectors: Annotated[
        str,
        typer.Option(
            help=f"Item space: {', '.join(ITEM_VECTORS)} (co-engagement PPMI-SVD fit on the "
            "warm-up period, refit during the test period; also runs *_static and *_text)."
        ),
    ] = EvalSettings.item_vectors,
    refresh_every: Annotated[
        int,
        typer.Option(
            min=0, help="Collaborative: refit every N applied test events (0 = static only)."
        ),
    ] = _CS.refresh_every,
    cf_rank: Annotated[int, typer.Option(min=1, help="Collaborative: SVD rank.")] = (
        _CS.refit.rank
    ),
    cf_window: Annotated[
        int, typer.Option(min=1, help="Collaborative: pair with the user's last N positives.")
    ] = _CS.coengagement.window,
    cf_window_days: Annotated[
        float, typer.Option(help="Collaborative: ... at most this many days older (inf: any).")
    ] = _CS.coengagement.window_days,
    cf_half_life_days: Annotated[
        float, typer.Option(help="Collaborative: half-life of co-engagement (inf: none).")
    ] = _CS.coengagement.half_life_days,
    cf_shift: Annotated[
        float, typer.Option(help="Collaborative: PPMI shift k (max(PMI - log k, 0)).")
    ] = _CS.refit.shift,
    cf_alpha: Annotated[
        float, typer.Option(help="Collaborative: PPMI context smoothing exponent.")
    ] = _CS.refit.alpha,
    cf_eig_power: Annotated[
        float, typer.Option(help="Collaborative: vectors are U S^p; this is p.")
    ] = _CS.refit.eig_power,
    compare_text: Annotated[
        bool, typer.Option(help="Collaborative: also the methods on text vectors (*_text).")
    ] = _CS.compare_text,
    warmup_only: Annotated[
        bool,
        typer.Option(
            "--warmup-only",
            help="Validation: replay the warm-up period alone, split the same way inside it.",
        ),
    ] = EvalSettings.warmup_only,
    through_kafka: Annotated[
        bool,
        typer.Option(
            "--through-kafka",
            help="PinnerSage states from a real interests worker on the embedded broker.",
        ),
    ] = EvalSettings.through_kafka,
) -> None:
    """Offline quality: chronological replay, PinnerSage against baselines, with 95% intervals."""
    from serving.datasets.movielens import MovieLensUnavailable
    from serving.evaluation import EVAL_ENGINE_CONFIG, run_eval, write_reports

    if dataset not in DATASETS:
        raise typer.BadParameter(f"--dataset must be one of {', '.join(DATASETS)}")
    if item_vectors not in ITEM_VECTORS:
        raise typer.BadParameter(f"--item-vectors must be one of {', '.join(ITEM_VECTORS)}")
    setup_logging()
    engine = EVAL_ENGINE_CONFIG.with_(window_days=window_days)
    collaborative = CollaborativeSettings(
        coengagement=dataclasses.replace(
            _CS.coengagement,
            window=cf_window,
            window_days=cf_window_days,
            half_life_days=cf_half_life_days,
        ),
        refit=dataclasses.replace(
            _CS.refit, rank=cf_rank, shift=cf_shift, alpha=cf_alpha, eig_power=cf_eig_power
        ),
        refresh_every=refresh_every,
        merge_threshold=_CS.merge_threshold if merge_threshold is None else merge_threshold,
        compare_text=compare_text,
    )
    if merge_threshold is not None and item_vectors != "collaborative":
        engine = engine.with_(merge_threshold=merge_threshold)
    if max_clusters is not None:
        engine = engine.with_(max_clusters=max_clusters)
    settings = EvalSettings(
        dataset=dataset,
        k=k,
        positive_min_rating=positive_min_rating,
        weight_by_rating=weight_by_rating,
        limit_users=limit_users,
        decay_per_day=decay_per_day,
        engine=engine,
        ablations=ablations,
        bootstrap=bootstrap,
        seed=seed,
        encoder_variant=variant,
        model_dir=model_dir,
        through_kafka=through_kafka,
        head_epochs=head_epochs,
        item_vectors=item_vectors,
        collaborative=collaborative,
        warmup_only=warmup_only,
    )
    try:
        report, _ = run_eval(settings)
    except MovieLensUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    paths = write_reports(report, out)
    typer.echo(paths["markdown"].read_text())
    for name, path in paths.items():
        typer.echo(f"{name:9} {path}", err=True)

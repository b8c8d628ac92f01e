"""``recstream eval``: offline quality, PinnerSage against baselines (``serving.evaluation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import setup_logging
from serving.evaluation import DATASETS, EvalSettings


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
        float | None, typer.Option(help="Engine Ward merge threshold (default: engine's).")
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
    setup_logging()
    engine = EVAL_ENGINE_CONFIG.with_(window_days=window_days)
    if merge_threshold is not None:
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

"""``recstream serve`` (one serving replica: API and dashboard) and ``recstream demo`` (everything
locally)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import Bootstrap, Quiet, kafka_settings, setup_logging
from serving.readmodels import ReadModelConfig


def demo(
    out: Annotated[
        Path, typer.Option(help="Working directory for the demo's data and logs.")
    ] = Path("data/demo"),
    port: Annotated[int, typer.Option(help="Port of the API and dashboard.")] = 8000,
    dataset: Annotated[
        str, typer.Option(help="auto (MovieLens 100k, else synthetic), movielens or synthetic")
    ] = "auto",
    live_rate: Annotated[
        float, typer.Option(min=0, help="Live events per second replayed after the warm load.")
    ] = 5.0,
    warm_fraction: Annotated[
        float, typer.Option(min=0, max=1, help="Share of the events loaded at once.")
    ] = 0.8,
    events: Annotated[int, typer.Option(min=1, help="Synthetic events (synthetic data only).")] = (
        20_000
    ),
    duration_s: Annotated[
        float | None, typer.Option("--duration-s", help="Stop cleanly after this many seconds.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run everything locally: broker, encoder and interests workers, API + live dashboard."""
    from serving.demo import run_demo

    setup_logging(logging.WARNING)
    code = run_demo(
        out,
        port=port,
        dataset=dataset,
        warm_fraction=warm_fraction,
        live_rate=live_rate,
        duration_s=duration_s,
        synthetic_events=events,
        progress=not quiet,
        echo=lambda msg: typer.echo(msg, err=True),
    )
    raise typer.Exit(code)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Replica state: RocksDB stores and snapshots.")
    ] = ReadModelConfig.data_dir,
    snapshot_every_s: Annotated[
        float, typer.Option(help="Seconds between snapshots (0 = only on shutdown).")
    ] = ReadModelConfig.snapshot_every_s,
    bootstrap_servers: Bootstrap = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the HTTP API (recommendations, interests, events, dashboard) as one serving replica."""
    import uvicorn

    from serving.api import create_app
    from serving.api.protocol import ProblemHttpToolsProtocol
    from serving.readmodels import ReadModels
    from streams.topics import ensure_topics

    setup_logging()
    settings = kafka_settings(bootstrap_servers)
    ensure_topics(settings)
    models = ReadModels(
        settings,
        ReadModelConfig(
            data_dir=data_dir, snapshot_every_s=snapshot_every_s, freeze_gc_when_ready=True
        ),
    )
    typer.echo(f"recstream API on http://{host}:{port}/ (docs at /docs)", err=True)
    uvicorn.run(
        create_app(models, settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=ProblemHttpToolsProtocol,  # problem details for requests uvicorn cannot parse
    )

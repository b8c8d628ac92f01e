"""``recstream worker interests`` and ``recstream worker encoder``: the streaming roles."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serving.cli.common import Bootstrap, kafka_settings, setup_logging
from streams.interests import InterestConfig
from streams.workers.interests.config import InterestsWorkerConfig

if TYPE_CHECKING:
    from encoders.session import EncoderSession

worker_app = typer.Typer(
    help="Run one streaming role against --bootstrap-servers.", no_args_is_help=True
)


# The choices of InterestsWorkerConfig's string settings; each member is named as its value, so
# the defaults look the config's values up by name.
class PublishedState(StrEnum):
    view = "view"
    full = "full"
    none = "none"


class EventLoop(StrEnum):
    uvloop = "uvloop"
    asyncio = "asyncio"


class EngineIn(StrEnum):
    process = "process"
    local = "local"


@worker_app.command("interests")
def worker_interests(
    data_dir: Annotated[
        Path, typer.Option(help="Local state: faust tables (RocksDB) and the item store.")
    ] = InterestsWorkerConfig.data_dir,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on METRICS_HOST:PORT.")
    ] = InterestsWorkerConfig.metrics_port,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the metrics endpoint (0.0.0.0 in a container).")
    ] = InterestsWorkerConfig.metrics_host,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most events per batch.")
    ] = InterestsWorkerConfig.batch_size,
    batch_within: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Longest a batch keeps filling while the consumer lags (s); a batch closes at "
            "once when it holds every event the broker had.",
        ),
    ] = InterestsWorkerConfig.batch_within_s,
    max_parked_per_user: Annotated[
        int,
        typer.Option(
            min=1,
            help="Engagements waiting for an item embedding, per user; older ones beyond "
            "it go to dead-letters.",
        ),
    ] = InterestsWorkerConfig.max_parked_per_user,
    purge_every: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Purge the local stores of forgotten data (deleted users and items) at most "
            "this often (s); a purge compacts them whole.",
        ),
    ] = InterestsWorkerConfig.purge_every_s,
    # The engine's options default to None (the engine's own default, which the help shows).
    window_days: Annotated[
        float | None,
        typer.Option(
            min=0.001, help=f"Engine: evict actions older (days; {InterestConfig.window_days:g})."
        ),
    ] = None,
    max_actions: Annotated[
        int | None,
        typer.Option(min=1, help=f"Engine: actions kept per user ({InterestConfig.max_actions})."),
    ] = None,
    merge_threshold: Annotated[
        float | None,
        typer.Option(
            min=1e-6,
            help=f"Engine: largest Ward cost to join ({InterestConfig.merge_threshold:g}).",
        ),
    ] = None,
    max_clusters: Annotated[
        int | None,
        typer.Option(min=1, help=f"Engine: clusters per user ({InterestConfig.max_clusters})."),
    ] = None,
    decay_per_day: Annotated[
        float | None,
        typer.Option(
            min=0.0, help=f"Engine: importance decay lambda ({InterestConfig.decay_per_day:g})."
        ),
    ] = None,
    recluster_every: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Engine: full Ward recluster every N "
            f"({InterestConfig.recluster_every}; 0=never).",
        ),
    ] = None,
    event_loop: Annotated[
        EventLoop, typer.Option(help="asyncio event loop (uvloop: faust's overhead in C).")
    ] = EventLoop[InterestsWorkerConfig.event_loop],
    engine_in: Annotated[
        EngineIn,
        typer.Option(
            "--engine",
            help="Where the users' states live: process (a child process, the engine on a "
            "core of its own) or local (this process: one core in all).",
        ),
    ] = EngineIn[InterestsWorkerConfig.engine_in],
    published_state: Annotated[
        PublishedState,
        typer.Option(
            help="Engine state bytes in user-interests records, for tools that replay the "
            "engine (readers use the records' actions): none, view (actions and assignments) "
            "or full (with cluster sums and event ids: bit-exact)."
        ),
    ] = PublishedState[InterestsWorkerConfig.published_state],
    bootstrap_servers: Bootstrap = None,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn",
) -> None:
    """Engagements -> per-user interest clusters (faust; scale out by starting more).

    Every worker of one group must run the same engine settings (they share the users' states).
    """
    from streams.topics import ensure_topics
    from streams.workers.interests.worker import InterestsWorker

    setup_logging(logging.WARNING)
    settings = kafka_settings(bootstrap_servers)
    ensure_topics(settings)
    given: dict[str, Any] = {
        "window_days": window_days,
        "max_actions": max_actions,
        "merge_threshold": merge_threshold,
        "max_clusters": max_clusters,
        "decay_per_day": decay_per_day,
        "recluster_every": recluster_every,
    }
    engine = InterestConfig(**{k: v for k, v in given.items() if v is not None})
    config = InterestsWorkerConfig(
        data_dir=data_dir,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        batch_size=batch_size,
        batch_within_s=batch_within,
        max_parked_per_user=max_parked_per_user,
        purge_every_s=purge_every,
        event_loop=event_loop.value,
        engine_in=engine_in.value,
        published_state=published_state.value,
        engine=engine,
    )
    InterestsWorker(settings, config).run(loglevel=loglevel)


class VectorDtype(StrEnum):
    float32 = "float32"
    float16 = "float16"


@worker_app.command("encoder")
def worker_encoder(
    model_dir: Annotated[
        Path | None, typer.Option(help="Exported encoder (exported on first use when missing).")
    ] = None,
    variant: Annotated[
        str, typer.Option(help="auto (int8 on CPU, fp32 on CUDA), fp32 or int8")
    ] = "auto",
    max_batch: Annotated[int, typer.Option(min=1)] = 256,
    vector_dtype: Annotated[
        VectorDtype,
        typer.Option(help="How vectors travel on item-embeddings (float16 halves the topic)."),
    ] = VectorDtype.float32,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Items -> ONNX text encoder (batched) -> item-embeddings (SIGINT, SIGTERM or SIGHUP stop
    it after the batch at hand)."""
    from streams.signals import stop_on_signals
    from streams.topics import ensure_topics
    from streams.workers.encoder import EncoderWorker

    setup_logging()
    settings = kafka_settings(bootstrap_servers)
    ensure_topics(settings)
    worker = EncoderWorker(
        settings, _encoder(model_dir, variant), max_batch=max_batch, vector_dtype=vector_dtype.value
    )
    try:
        with stop_on_signals() as stop:
            while not stop.is_set():
                worker.run_once()
    finally:
        worker.close()


def _encoder(model_dir: Path | None, variant: str) -> EncoderSession:
    from encoders.session import EncoderSession, default_model_dir, ensure_exported

    directory = model_dir or default_model_dir()
    ensure_exported(directory)
    return EncoderSession(directory, variant=variant)

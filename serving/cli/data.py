"""Events in and out of Kafka (``publish``, ``record``, ``replay``); ``generate`` synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import Bootstrap, Quiet, kafka_settings, setup_logging


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

    setup_logging()
    if topic is not None and topic not in BY_NAME:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of {', '.join(BY_NAME)}")
    settings = kafka_settings(bootstrap_servers)
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

    setup_logging()
    n = do_record(
        kafka_settings(bootstrap_servers),
        topic,
        out,
        from_beginning=from_beginning,
        timeout_s=timeout_s,
        max_records=max_records,
        progress=not quiet,
    )
    typer.echo(f"recorded {n} records to {out}", err=True)


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
    setup_logging()
    settings = kafka_settings(bootstrap_servers)
    ensure_topics(settings)
    n = do_replay(settings, file, speed=speed, topic=topic, progress=not quiet)
    typer.echo(f"replayed {n} records", err=True)


def generate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data/generated"),
    users: Annotated[int, typer.Option(min=1)] = 200,
    items: Annotated[int, typer.Option(min=1)] = 2000,
    events: Annotated[int, typer.Option(min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 0,
    days: Annotated[float, typer.Option(min=0.001)] = 60.0,
) -> None:
    """Write a synthetic catalogue, engagement log and ground truth (deterministic per seed)."""
    from serving.datasets.generated import generate as gen
    from serving.datasets.generated import write

    paths = write(gen(users, items, events, seed=seed, days=days), out)
    for name, path in paths.items():
        typer.echo(f"{name:12} {path}")

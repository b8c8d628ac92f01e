"""``recstream broker`` (the embedded broker) and ``recstream topics`` (create and list)."""

from __future__ import annotations

from typing import Annotated

import typer

from serving.cli.common import Bootstrap, kafka_settings, setup_logging


def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-protocol broker (tansu, memory storage) in the foreground."""
    from streams.broker import run_foreground

    typer.echo(f"embedded broker on {host}:{port} (Ctrl-C to stop)", err=True)
    raise typer.Exit(run_foreground(host, port))


def topics(bootstrap_servers: Bootstrap = None) -> None:
    """Create recstream's topics (idempotent) and list them."""
    from streams.topics import ALL_TOPICS, ensure_topics

    setup_logging()
    created = ensure_topics(kafka_settings(bootstrap_servers))
    for spec in ALL_TOPICS:
        mark = "created" if spec.name in created else "exists"
        typer.echo(f"{spec.name:16} partitions={spec.partitions} {spec.config or ''} [{mark}]")

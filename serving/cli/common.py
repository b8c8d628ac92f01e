"""What the command groups share: the --bootstrap-servers and --quiet options, logging, and the
Kafka settings."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from streams.settings import KafkaSettings

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        envvar="RECSTREAM_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers (host:port[,host:port]); SASL/SSL settings come from env.",
        show_default=KafkaSettings.bootstrap_servers,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def kafka_settings(bootstrap_servers: str | None) -> KafkaSettings:
    return KafkaSettings.from_env(bootstrap_servers)

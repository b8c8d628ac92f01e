"""The ``recstream`` command line: one entry point for every role and tool.

One module per command group: ``broker`` (broker, topics), ``data`` (publish, record, replay,
generate), ``serve`` (serve, demo), ``workers`` (worker interests, worker encoder), ``encoders``
(encoders export and train, encode), ``evaluate`` (eval); ``common`` holds what they share.
Options show the defaults of the config objects they fill (``InterestsWorkerConfig``,
``InterestConfig``, ``ReadModelConfig``, ``EvalSettings``, ``KafkaSettings``), so those are
imported up front; everything else heavy is imported inside the commands.
"""

from __future__ import annotations

import typer

from serving.cli import broker, data, encoders, evaluate, serve, workers

app = typer.Typer(
    name="recstream",
    help="Streaming real-time personalization: PinnerSage interests on Kafka, ONNX encoders, HNSW.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# The order here is the order of `recstream --help` (commands first, then the groups).
app.command()(broker.broker)
app.command()(broker.topics)
app.command()(data.publish)
app.command()(data.record)
app.command()(data.replay)
app.command()(data.generate)
app.command()(serve.demo)
app.command()(serve.serve)
app.add_typer(workers.worker_app, name="worker")
app.add_typer(encoders.encoders_app, name="encoders")
app.command()(encoders.encode)
app.command("eval")(evaluate.eval_quality)


def main() -> None:
    app()

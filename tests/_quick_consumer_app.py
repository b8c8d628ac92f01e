"""A faust app on ``streams.faust_runtime.consumer``'s consumer whose agent logs every event it
takes (run as a script by tests/test_faust_consumer.py):
``python tests/_quick_consumer_app.py BOOTSTRAP TOPIC GROUP OUT``.

Each taken event is one line ``partition offset`` in OUT. A changelog-backed table (counts per
key) makes every start recover state before the events flow, as in the interests worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import faust

    from streams.faust_runtime.consumer import use_quick_consumer
    from tests._faust_app import app_for_tests

    bootstrap, topic_name, group, out = sys.argv[1:5]
    app = app_for_tests(
        group,
        bootstrap,
        broker_commit_interval=0.5,
        topic_partitions=8,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=8192,
    )
    use_quick_consumer(app)
    topic = app.topic(
        topic_name, key_type=str, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    counts = app.Table("counts", default=int, partitions=8)
    log = open(out, "a", buffering=1)  # noqa: SIM115  # lives as long as the process

    @app.agent(topic)
    async def take(stream):
        async for event in stream.events():
            counts[event.key] += 1
            log.write(f"{event.message.partition} {event.message.offset}\n")

    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()

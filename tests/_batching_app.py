"""A faust app whose agent takes ``take_waiting`` batches and logs them (run as a script by
tests/test_batching.py): ``python tests/_batching_app.py BOOTSTRAP TOPIC MAX WITHIN OUT``.

Each batch is one JSON line in OUT: its size, the event values and the time it was handed
over (``time.time()``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import faust

    from streams.faust_runtime.batching import take_waiting
    from tests._faust_app import app_for_tests

    bootstrap, topic_name, max_, within, out = sys.argv[1:6]
    app = app_for_tests(f"take-waiting-{time.time_ns()}", bootstrap)
    topic = app.topic(
        topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    log = open(out, "a", buffering=1)  # noqa: SIM115  # lives as long as the process

    @app.agent(topic)
    async def take(stream):  # type: ignore[no-untyped-def]
        async for events in take_waiting(stream, int(max_), float(within)):
            values = [ev.value.decode() for ev in events]
            log.write(json.dumps({"n": len(events), "values": values, "at": time.time()}) + "\n")

    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()

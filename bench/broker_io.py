"""Events/s published and consumed through the embedded broker with kafka-python (batched).

Figures: our Publisher (schema-validated events, keyed) and ValidatingConsumer (decode +
validate every message), each beside the raw kafka-python ceiling measured in the same run
(pre-encoded bytes out; bytes in, no decoding).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, parse_args, peak_rss_mb, progress
from streams.broker import EmbeddedBroker
from streams.consumer import ValidatingConsumer
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import Engagement
from streams.topics import ENGAGEMENTS, ensure_topics


def main() -> None:
    args = parse_args(__doc__ or "")
    n = 20_000 if args.quick else 200_000
    events = [
        Engagement(
            event_id=f"e{i}",
            user_id=f"u{i % 5000}",
            item_id=f"i{(i * 7919) % 50000}",
            action="click",
            ts=1_700_000_000_000 + i,
        )
        for i in range(n)
    ]
    with EmbeddedBroker() as broker:
        settings = broker.settings()
        ensure_topics(settings)

        progress(f"publishing {n} events with Publisher")
        t0 = time.perf_counter()
        with Publisher(settings, linger_ms=20, batch_size=512 * 1024) as pub:
            pub.publish_many(events)
        publish_s = time.perf_counter() - t0

        progress("publishing the same events as pre-encoded bytes (raw ceiling)")
        payloads = [(e.key, e.to_json()) for e in events]
        t0 = time.perf_counter()
        with Publisher(settings, linger_ms=20, batch_size=512 * 1024) as pub:
            for key, value in payloads:
                pub.send("items", value, key=key)  # another topic: the consume runs stay separate
        raw_publish_s = time.perf_counter() - t0

        progress("consuming with ValidatingConsumer")
        t0 = time.perf_counter()
        got = 0
        deadline = time.monotonic() + 600
        with ValidatingConsumer(settings, [ENGAGEMENTS.name], rejected_by="bench") as consumer:
            while got < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"consumed only {got} of {n} events in 600 s")
                got += len(consumer.poll(timeout_ms=1000))
        consume_s = time.perf_counter() - t0

        progress("consuming raw bytes (ceiling)")
        t0 = time.perf_counter()
        raw_got = sum(1 for _ in read_topic(settings, "items", idle_timeout_s=3.0))
        raw_consume_s = time.perf_counter() - t0
        assert raw_got == n, raw_got
        broker_rss = broker.peak_rss_mb()

    emit(
        {
            "bench": "broker_io",
            "quick": args.quick,
            "events": n,
            "publish_eps": round(n / publish_s),
            "consume_eps": round(n / consume_s),
            "raw_publish_eps": round(n / raw_publish_s),
            "raw_consume_eps": round(n / raw_consume_s),
            "ratio_publish_vs_raw": round(raw_publish_s / publish_s, 3),
            "ratio_consume_vs_raw": round(raw_consume_s / consume_s, 3),
            "peak_rss_mb": peak_rss_mb(),  # this client process
            "broker_peak_rss_mb": broker_rss,  # the embedded broker (memory storage)
        }
    )


if __name__ == "__main__":
    main()

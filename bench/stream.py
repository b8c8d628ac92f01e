"""End-to-end events/s through broker + interests worker, beside faust's bare consume loop.

1. Pre-load N engagements (and item embeddings, dim 384) into the embedded broker.
2. Run a bare faust agent that only consumes the same topic (``take_events``, count): its
   events/s is the ceiling for any faust worker here (``bare_eps``, the contract's baseline).
   Then the same agent on the worker's own consumer (``streams.faust_runtime.consumer``, no task per
   message): ``bare_quick_eps``, the ceiling for a worker on that consumer.
3. Run the real interests worker (a process, as deployed) and time first -> last event applied
   (from its Prometheus counter).
4. Freshness: with the worker caught up, publish engagements at a steady rate and time each
   one from publish to its ``user-interests`` record (carrying its event id) being readable.
5. Scale-out: a second worker joins the group; once the two split the partitions, freshness at
   1,000 events/s again (``*_2workers`` keys): what adding a worker buys. It buys something
   only with a core to spare: on a 2-core machine the two workers, the broker and the
   publisher share the cores, and the result is worse than with one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, parse_args, percentile_ms, progress, start_recstream
from streams.broker import EMBEDDED_ENV, EmbeddedBroker, free_port
from streams.publish import Publisher
from streams.schemas import Engagement, ItemEmbedding
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS, ensure_topics
from streams.workers.interests.config import InterestsWorkerConfig

DIM = 384
HISTORY_TS = 1_700_000_000_000  # event time of the first preloaded engagement (ms)
PUBLISH_TICK_S = 0.005


def bare_agent(bootstrap: str, n: int, app_id: str, datadir: str, quick: bool = False) -> None:
    """Subprocess mode: a faust agent that only consumes; prints first->last seconds. It runs
    on the event loop the interests worker runs on by default (uvloop), like for like. With
    ``quick``, on the consumer the worker has (``streams.faust_runtime.consumer``): what that alone
    buys a consume-only loop."""
    import faust

    from streams.faust_runtime.event_loop import use_event_loop

    use_event_loop(InterestsWorkerConfig().event_loop)

    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=datadir,
        broker_rebalance_timeout=6.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        stream_wait_empty=False,
    )
    if quick:
        from streams.faust_runtime.consumer import use_quick_consumer

        use_quick_consumer(app)
    topic = app.topic(
        ENGAGEMENTS.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=ENGAGEMENTS.partitions,
    )
    state = {"seen": 0, "t0": 0.0}

    @app.agent(topic)
    async def consume(stream):
        async for events in stream.take_events(2000, within=0.02):
            if not state["seen"]:
                state["t0"] = time.perf_counter()
            state["seen"] += len(events)
            if state["seen"] >= n:
                # faust redirects sys.stdout into its logger: write to the real stdout.
                out = sys.__stdout__
                assert out is not None
                out.write(json.dumps({"seconds": time.perf_counter() - state["t0"]}) + "\n")
                out.flush()
                os._exit(0)

    worker = faust.Worker(app, loglevel="error", quiet=True)
    worker.execute_from_commandline()


class Workload:
    """The items (dim 384) and who engages with what.

    - ``topical`` (default): items in Gaussian topic clusters (``clustered_unit_vectors``, as
      in bench/serve.py); each user has 3 topics and takes 90% of their items from them, the
      rest from anywhere: the handful of interests PinnerSage is built for.
    - ``uniform``: unrelated random items, each user engaging with any of them. Every user
      ends up at the cluster cap, and nearly every event merges two clusters: the engine's
      worst case, and the largest states (~20 KB).
    """

    def __init__(self, kind: str, users: int, items: int, seed: int = 0) -> None:
        from serving.datasets.vectors import clustered_unit_vectors

        self.users, self.items = users, items
        rng = np.random.default_rng(seed)
        self.topics: list[np.ndarray] = []
        if kind == "uniform":
            self.vectors = rng.normal(size=(items, DIM)).astype(np.float32)
        elif kind == "topical":
            self.vectors, topic_of = clustered_unit_vectors(
                items, DIM, clusters=max(items // 100, 10), seed=seed
            )
            members = [np.flatnonzero(topic_of == t) for t in np.unique(topic_of)]
            self.topics = [m for m in members if len(m) >= 10]
            self.user_topics = rng.integers(0, len(self.topics), size=(users, 3))
        else:
            raise ValueError(f"unknown workload {kind!r}")

    def events(self, n: int, start_ts: int, seed: int) -> list[Engagement]:
        rng = np.random.default_rng(seed)
        us = rng.integers(0, self.users, size=n)
        its = rng.integers(0, self.items, size=n)
        if self.topics:
            own = rng.random(n) < 0.9
            picks = self.user_topics[us, rng.integers(0, 3, size=n)]
            where = rng.random(n)
            for i in np.flatnonzero(own).tolist():
                topic = self.topics[picks[i]]
                its[i] = topic[int(where[i] * len(topic))]
        return [
            Engagement(
                event_id=f"s{seed}-{i}",
                user_id=f"u{us[i]}",
                item_id=f"i{its[i]}",
                action="click",
                ts=start_ts + i,
            )
            for i in range(n)
        ]


def run_bare_agent(
    bootstrap: str, n: int, app_id: str, datadir: Path, env: dict[str, str], quick: bool = False
) -> float:
    """Seconds the bare agent (a subprocess, its own consumer group) took for ``n`` events."""
    args = [sys.executable, __file__, "--bare-agent", bootstrap, str(n), app_id, str(datadir)]
    bare = subprocess.run(
        args + (["--quick"] if quick else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = bare.stdout.strip().splitlines()[-1] if bare.stdout.strip() else ""
    if "{" not in last:
        raise RuntimeError(f"the bare agent printed no result: {bare.stderr[-2000:]}")
    return float(json.loads(last[last.index("{") :])["seconds"])  # after faust's terminal codes


def worker_metric(port: int, prefix: str) -> float:
    """Sum of the worker's Prometheus samples whose line starts with ``prefix``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def applied_events(port: int) -> float:
    return worker_metric(port, "recstream_interest_events_total{")


def measure_freshness(
    settings: KafkaSettings, rate: float, seconds: float, workload: Workload, seed: int = 99
) -> list[float]:
    """Publish at ``rate``/s; return publish -> user-interests-visible latencies (s)."""
    return asyncio.run(_freshness(settings, rate, seconds, workload, seed))


async def _freshness(
    settings: KafkaSettings, rate: float, seconds: float, workload: Workload, seed: int
) -> list[float]:
    # aiokafka (records built and parsed in C) for both ends: kafka-python's publisher and
    # reader took ~70% of a core at 1,000 events/s, a core the worker and broker share.
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(
        **settings.aiokafka(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    producer = AIOKafkaProducer(**settings.aiokafka(), acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        tps = [TopicPartition(USER_INTERESTS.name, p) for p in range(USER_INTERESTS.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

        async def read() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=50)
                now = time.perf_counter()
                for records in batch.values():
                    for m in records:
                        if m.value:
                            eid = orjson.loads(m.value).get("last_event_id")
                            if eid in sent and eid not in seen:
                                seen[eid] = now

        reader = asyncio.create_task(read())
        n = int(rate * seconds)
        # Soon after the preloaded history (hours to days later for the seeds used here): events
        # years later would evict each user's whole history on arrival, work no live stream does.
        events = workload.events(n, HISTORY_TS + 10_000_000 + seed * 100_000, seed=seed)
        t0 = time.perf_counter()
        for i, ev in enumerate(events):
            # In ticks of PUBLISH_TICK_S (each event at most that early): a wake-up per event
            # cost the publisher a tenth of a core, which the worker and broker share.
            delay = t0 + i / rate - time.perf_counter()
            if delay > PUBLISH_TICK_S:
                await asyncio.sleep(delay)
            sent[ev.event_id] = time.perf_counter()
            # Queued (sent within the producer's 5 ms linger); delivery is not awaited one by one.
            await producer.send(ENGAGEMENTS.name, ev.to_json(), key=ev.key)
        await producer.flush()
        # A user's record names only the last event of its batch: wait for those.
        last_per_user = {ev.user_id: ev.event_id for ev in events}
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and not all(e in seen for e in last_per_user.values()):
            await asyncio.sleep(0.05)
        reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    return [seen[e] - sent[e] for e in sent if e in seen]


def start_worker(bootstrap: str, data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    return start_recstream(
        [
            "worker",
            "interests",
            "--bootstrap-servers",
            bootstrap,
            "--data-dir",
            str(data_dir),
            "--metrics-port",
            str(port),
        ],
        open(log, "wb"),
    )


def wait_for_split(ports: list[int], partitions: int, timeout_s: float = 120) -> None:
    """Until every worker holds some engagement partitions and together they hold them all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            held = [worker_metric(p, "recstream_interest_partitions ") for p in ports]
        except OSError:
            held = []
        if held and min(held) > 0 and sum(held) == partitions:
            return
        time.sleep(0.5)
    raise RuntimeError(f"workers did not split the {partitions} partitions in {timeout_s} s")


def _workload_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload",
        choices=("topical", "uniform"),
        default="topical",
        help="who engages with what (see Workload)",
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-agent":
        bare_agent(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], "--quick" in sys.argv)
        return
    args = parse_args(__doc__ or "", _workload_option)
    n = 20_000 if args.quick else 200_000
    users, items = (2_000, 2_000) if args.quick else (10_000, 20_000)
    fresh_s = 5.0 if args.quick else 15.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    env = {**os.environ, **EMBEDDED_ENV}
    with EmbeddedBroker() as broker:
        settings = broker.settings()
        ensure_topics(settings)
        progress(f"publishing {items} item embeddings (dim {DIM}) and {n} engagements")
        workload = Workload(args.workload, users, items)
        vecs = workload.vectors
        with Publisher(settings) as pub:
            for i in range(items):
                rec = ItemEmbedding.from_vector(
                    f"i{i}", vecs[i], encoder_version="bench", source_ts=0
                )
                pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)
            pub.publish_many(workload.events(n, HISTORY_TS, seed=1))

        progress("bare faust agent (consume only)")
        bare_s = run_bare_agent(broker.bootstrap_servers, n, "bench-bare", tmp / "bare", env)
        progress("bare faust agent on the worker's consumer (consume only)")
        bare_quick_s = run_bare_agent(
            broker.bootstrap_servers, n, "bench-bare-quick", tmp / "bare-quick", env, quick=True
        )

        progress("interests worker")
        port = free_port()
        worker = start_worker(broker.bootstrap_servers, tmp / "worker", port, tmp / "worker.log")
        second: subprocess.Popen | None = None
        try:
            t_last = 0.0
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                try:
                    done = applied_events(port)
                except OSError:
                    done = 0.0
                now = time.time()
                if done >= n:
                    t_last = now
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited; see {tmp / 'worker.log'}")
                # Each scrape costs the worker a few ms of its GIL: poll gently.
                time.sleep(0.2)
            if not t_last:
                raise RuntimeError("worker did not finish in time")
            # From the moment it could take events (item feed loaded, partitions assigned), not
            # from its first applied event: that comes only after its whole first batch.
            worker_s = t_last - worker_metric(port, "recstream_interest_consuming_since_seconds ")
            batches = worker_metric(port, "recstream_interest_batch_events_count ")
            mean_batch = worker_metric(port, "recstream_interest_batch_events_sum ") / batches
            # At half the worker's measured capacity (at most 1,000/s): the freshness it gives
            # when it keeps up. Then at the contract's 1,000/s.
            light = min(1000.0, max(50.0, round(0.5 * n / worker_s, -1)))
            progress(f"freshness at {light:.0f} events/s for {fresh_s:.0f} s")
            light_latencies = measure_freshness(settings, light, fresh_s, workload, seed=98)
            progress(f"freshness at 1000 events/s for {fresh_s:.0f} s")
            latencies = measure_freshness(settings, 1000.0, fresh_s, workload)
            progress("a second worker joins the group")
            port2 = free_port()
            second = start_worker(
                broker.bootstrap_servers, tmp / "worker2", port2, tmp / "worker2.log"
            )
            wait_for_split([port, port2], ENGAGEMENTS.partitions)
            # Until the new worker has restored its partitions' states from the changelog and
            # its item feed: warm-up rounds at a light rate until they come back fresh.
            settle_until = time.monotonic() + 180
            for seed in range(1000, 10_000):
                warm = measure_freshness(settings, 100.0, 2.0, workload, seed=seed)
                fresh = len(warm) >= 190 and percentile_ms(warm, 99) < 1000
                if fresh or time.monotonic() > settle_until:
                    break
            progress(f"freshness at 1000 events/s with 2 workers for {fresh_s:.0f} s")
            scaled = measure_freshness(settings, 1000.0, fresh_s, workload, seed=96)
        finally:
            for proc in (worker, second):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
    emit(
        {
            "bench": "stream",
            "quick": args.quick,
            "events": n,
            "worker_eps": round(n / worker_s),
            "bare_eps": round(n / bare_s),
            "ratio_worker_vs_bare": round(bare_s / worker_s, 3),
            # The same bare loop on the worker's consumer (no task per message): the ratio
            # without what the worker's consumer itself gains over faust's.
            "bare_quick_eps": round(n / bare_quick_s),
            "ratio_worker_vs_bare_quick": round(bare_quick_s / worker_s, 3),
            "freshness_p50_ms": percentile_ms(latencies, 50),
            "freshness_p99_ms": percentile_ms(latencies, 99),
            "freshness_samples": len(latencies),
            "light_rate_eps": light,
            "freshness_p50_ms_light": percentile_ms(light_latencies, 50),
            "freshness_p99_ms_light": percentile_ms(light_latencies, 99),
            "freshness_samples_light": len(light_latencies),
            "freshness_p50_ms_2workers": percentile_ms(scaled, 50),
            "freshness_p99_ms_2workers": percentile_ms(scaled, 99),
            "freshness_samples_2workers": len(scaled),
            "worker_mean_batch": round(mean_batch, 1),
            "users": users,
            "dim": DIM,
            "workload": args.workload,
            "event_loop": InterestsWorkerConfig().event_loop,
        }
    )


if __name__ == "__main__":
    main()

"""Serving benchmark: recommendation latency under load, and end-to-end freshness.

Setup (all on loopback): the embedded broker; N item embeddings (clustered synthetic unit
vectors, dim 384) and U users' interests records (computed offline by the interests engine from
~30 engagements each) published to their topics; the API (`recstream serve`) and the interests
worker as subprocesses.

- Load: 2 generator processes send ``GET /users/{u}/recommendations?k=20`` for random users at a
  fixed total rate (open loop: latency counts from the scheduled send time), for ``duration``.
  Baseline in the same run: ``GET /healthz`` at the same rate (the HTTP floor of this stack).
- Freshness (during the load): a new user's engagements are published; the time until their
  recommendations stop being the cold-start list is the end-to-end freshness (broker -> interests
  worker -> user-interests -> serving read model -> HTTP).

Full: 100k items, 10k users, 500 req/s. ``--quick``: 10k items, 1k users, 300 req/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, parse_args, percentile_ms, progress, start_recstream

DIM = 384


def _load_worker(
    base: str, path_tpl: str, users: list[str], rate: float, duration: float, seed: int, q: mp.Queue
) -> None:
    """Open-loop load: requests start on schedule whatever the answers do; latency counts from
    the scheduled start, so queueing shows. A lean HTTP/1.1 keep-alive client on raw sockets
    (uvloop when installed): httpx costs ~1 ms of CPU a request, which on 2 cores would be the
    bottleneck instead of the server."""
    host, port = base.removeprefix("http://").split(":")
    conns = 32

    async def main() -> tuple[list[float], int]:
        rng = np.random.default_rng(seed)
        lat: list[float] = []
        errors = 0
        idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(conns):
            idle.put_nowait(await asyncio.open_connection(host, int(port)))

        async def request(
            conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
        ) -> int:
            reader, writer = conn
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            return int(head[9:12])

        async def one(scheduled: float, user: str) -> None:
            nonlocal errors
            conn = await idle.get()
            try:
                status = await asyncio.wait_for(request(conn, path_tpl.format(user=user)), 5.0)
                if status != 200:
                    errors += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                conn[1].close()
                with contextlib.suppress(OSError):  # else the next request retries
                    conn = await asyncio.open_connection(host, int(port))
            finally:
                idle.put_nowait(conn)
            lat.append(time.perf_counter() - scheduled)

        n = int(rate * duration)
        start = time.perf_counter() + 0.2
        tasks = []
        for i in range(n):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at, users[int(rng.integers(len(users)))])))
        await asyncio.gather(*tasks)
        while not idle.empty():
            idle.get_nowait()[1].close()
        return lat, errors

    try:
        import uvloop

        q.put(uvloop.run(main()))
    except ImportError:
        q.put(asyncio.run(main()))


def run_load(
    base: str, path_tpl: str, users: list[str], rate: float, duration: float, procs: int = 2
) -> tuple[list[float], int, float]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    workers = [
        ctx.Process(target=_load_worker, args=(base, path_tpl, users, rate / procs, duration, s, q))
        for s in range(procs)
    ]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    lat: list[float] = []
    errors = 0
    for _ in workers:
        part, err = q.get()
        lat += part
        errors += err
    for w in workers:
        w.join()
    return lat, errors, time.perf_counter() - t0


def build_users(
    n_users: int, vectors: np.ndarray, cluster_of: np.ndarray, seed: int
) -> list[bytes]:
    """``user-interests`` values (JSON) of users with ~30 engagements on 3 topics each, as the
    interests worker publishes them."""
    from streams.interests import InterestClusters
    from streams.schemas import Engagement
    from streams.workers.interests.engine_process import Publishing, interests_record

    rng = np.random.default_rng(seed)
    by_cluster: dict[int, np.ndarray] = {}
    for c in np.unique(cluster_of):
        by_cluster[int(c)] = np.flatnonzero(cluster_of == c)
    big = [c for c, m in by_cluster.items() if len(m) >= 10]
    now = int(time.time() * 1000)
    records = []
    for u in range(n_users):
        state = InterestClusters()
        topics = rng.choice(big, size=3, replace=False)
        for n in range(30):
            members = by_cluster[int(topics[rng.integers(3)])]
            item = int(members[rng.integers(len(members))])
            ev = Engagement(
                event_id=f"b{u}-{n}",
                user_id=f"u{u}",
                item_id=f"i{item}",
                action="click",
                ts=now - (30 - n) * 60_000,
            )
            state.learn_one(ev, vectors[item])
        records.append(interests_record(f"u{u}", state, b"", Publishing()))
    return records


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = bool(args.quick)
    n_items, n_users = (10_000, 1_000) if quick else (100_000, 10_000)
    rate, duration = (300.0, 8.0) if quick else (500.0, 20.0)
    probes = 10 if quick else 20

    import httpx

    from serving.datasets.vectors import clustered_unit_vectors
    from streams.broker import EmbeddedBroker, free_port
    from streams.publish import Publisher
    from streams.schemas import Engagement, ItemEmbedding
    from streams.topics import ITEM_EMBEDDINGS, USER_INTERESTS, ensure_topics

    progress(f"building {n_items} items and {n_users} users")
    vectors, cluster_of = clustered_unit_vectors(
        n_items, DIM, clusters=max(n_items // 100, 10), seed=0
    )
    records = build_users(n_users, vectors, cluster_of, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {"RECSTREAM_API_KEYS": ""}  # no keys: the load sends none
    procs: list[subprocess.Popen[bytes]] = []
    with EmbeddedBroker() as broker:
        settings = broker.settings()
        ensure_topics(settings)
        progress("publishing item embeddings and user interests")
        with Publisher(settings, linger_ms=20) as pub:
            for i in range(n_items):
                rec = ItemEmbedding.from_vector(
                    f"i{i}",
                    vectors[i],
                    encoder_version="bench",
                    source_ts=0,
                    text=f"item {i}",
                    category=f"c{cluster_of[i] % 20}",
                )
                pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)
            for n, value in enumerate(records):
                pub.send(USER_INTERESTS.name, value, key=f"u{n}".encode())
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
        logs = open(tmp / "children.log", "ab")  # noqa: SIM115
        procs.append(
            start_recstream(
                [
                    "serve",
                    *bootstrap,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(tmp / "serving"),
                    "--snapshot-every-s",
                    "0",
                ],
                logs,
                env,
            )
        )
        procs.append(
            start_recstream(
                ["worker", "interests", *bootstrap, "--data-dir", str(tmp / "worker")], logs, env
            )
        )
        try:
            t0 = time.monotonic()
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a child exited; see {tmp / 'children.log'}")
                time.sleep(0.5)
            progress(f"API ready after {time.monotonic() - t0:.1f}s (index built from the topic)")
            users = [f"u{u}" for u in range(n_users)]
            for u in users[:200]:  # warm the profile cache and the connection
                httpx.get(f"{base}/users/{u}/recommendations?k=20")

            progress(f"baseline: GET /healthz at {rate:.0f} req/s for {duration / 2:.0f}s")
            base_lat, _, _ = run_load(base, "/healthz", users, rate, duration / 2)

            # Freshness probes run in a thread while the load runs.
            fresh_ms: list[float] = []

            def probe_freshness() -> None:
                rng = np.random.default_rng(7)
                with Publisher(settings, linger_ms=0) as pub, httpx.Client(base_url=base) as c:
                    time.sleep(2.0)
                    for p in range(probes):
                        user = f"probe-{p}"
                        items = rng.choice(n_items, size=5, replace=False)
                        sent = time.perf_counter()
                        now = int(time.time() * 1000)
                        for n, item in enumerate(items):
                            pub.publish(
                                Engagement(
                                    event_id=f"p{p}-{n}",
                                    user_id=user,
                                    item_id=f"i{item}",
                                    action="like",
                                    ts=now + n,
                                )
                            )
                        pub.flush()
                        deadline = sent + 10
                        while time.perf_counter() < deadline:
                            r = c.get(f"/users/{user}/recommendations?k=20")
                            if r.status_code == 200 and not r.json()["cold_start"]:
                                fresh_ms.append((time.perf_counter() - sent) * 1000)
                                break
                            time.sleep(0.005)
                        time.sleep(max(duration / probes - 0.5, 0.1))

            import threading

            prober = threading.Thread(target=probe_freshness, daemon=True)
            # Let the worker join its group and read the item embeddings before probing.
            wait_until = time.monotonic() + 60
            while time.monotonic() < wait_until:
                with Publisher(settings, linger_ms=0) as pub:
                    pub.publish(
                        Engagement(
                            event_id="warm",
                            user_id="warm-up",
                            item_id="i1",
                            action="like",
                            ts=int(time.time() * 1000),
                        )
                    )
                r = httpx.get(f"{base}/users/warm-up/recommendations")
                if r.status_code == 200 and not r.json()["cold_start"]:
                    break
                time.sleep(1.0)
            progress(
                f"load: recommendations at {rate:.0f} req/s for {duration:.0f}s, "
                f"{probes} freshness probes"
            )
            prober.start()
            lat, errors, _ = run_load(
                base, "/users/{user}/recommendations?k=20", users, rate, duration
            )
            prober.join(timeout=30)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()

    emit(
        {
            "bench": "serve",
            "quick": quick,
            "items": n_items,
            "users": n_users,
            "rps": rate,
            "achieved_rps": round(len(lat) / duration, 1),
            "p50_ms": percentile_ms(lat, 50),
            "p99_ms": percentile_ms(lat, 99),
            "errors": errors,
            "requests": len(lat),
            "freshness_p50_ms": round(float(np.percentile(fresh_ms, 50)), 1) if fresh_ms else None,
            "freshness_p99_ms": round(float(np.percentile(fresh_ms, 99)), 1) if fresh_ms else None,
            "freshness_probes": len(fresh_ms),
            "baseline_healthz_p50_ms": percentile_ms(base_lat, 50),
            "baseline_healthz_p99_ms": percentile_ms(base_lat, 99),
        }
    )


if __name__ == "__main__":
    main()

"""``recstream demo``: the whole system on one machine, in one command.

1. starts the embedded broker (tansu) and creates the topics;
2. starts the encoder worker, the interests worker and the API as subprocesses (logs under
   ``<out>/logs``);
3. loads sample data with a progress bar: MovieLens 100k (real titles) when it can be had, else
   the synthetic generator; the first ``warm_fraction`` of the ratings are published at once,
   their timestamps shifted so that they end "now";
4. prints the dashboard URL and keeps replaying the rest of the ratings slowly as live events
   (timestamped when sent), so the dashboard moves;
5. on Ctrl-C, SIGTERM, SIGHUP or after ``duration_s``: stops the children (API first, broker last).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from streams.broker import EMBEDDED_ENV
from streams.schemas import Engagement, Item

log = logging.getLogger(__name__)

CHILD_ENV = {**EMBEDDED_ENV, "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class DemoData:
    name: str
    items: list[Item]
    engagements: list[Engagement]  # in time order


def load_sample(dataset: str = "auto", *, synthetic_events: int = 20_000) -> DemoData:
    """MovieLens 100k if ``dataset`` is auto/movielens and it can be had; else synthetic."""
    if dataset in ("auto", "movielens"):
        try:
            from serving.datasets.movielens import MovieLensUnavailable, load_movielens
        except ImportError as exc:
            if dataset == "movielens":
                raise
            log.warning("MovieLens loader not available (%s); using synthetic data", exc)
        else:
            try:
                ml = load_movielens()
                return DemoData("movielens-100k", ml.items, ml.ratings)
            except (MovieLensUnavailable, OSError) as exc:
                if dataset == "movielens":
                    raise
                log.warning("MovieLens 100k unavailable (%s); using synthetic data", exc)
    from serving.datasets.generated import generate

    data = generate(users=200, items=2000, events=synthetic_events, seed=0)
    return DemoData("synthetic", data.items, data.engagements)


def shift_to_now(events: Sequence[Engagement], now_ms: int) -> list[Engagement]:
    """The same events with timestamps shifted so that the last one happens at ``now_ms``."""
    if not events:
        return []
    delta = now_ms - max(e.ts for e in events)
    return [e.model_copy(update={"ts": e.ts + delta}) for e in events]


class Children:
    """Subprocesses stopped in reverse start order with SIGTERM (then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop())
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        self.procs.append((name, proc, out))
        return proc

    def dead(self) -> list[str]:
        return [name for name, p, _ in self.procs if p.poll() is not None]

    def stop(self, timeout_s: float = 20.0) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name, proc, out in reversed(self.procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
            out.close()
        self.procs.clear()


def _wait_http(url: str, timeout_s: float, children: Children, stop: threading.Event) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        if children.dead():
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        stop.wait(0.3)
    return False


def run_demo(
    out: Path = Path("data/demo"),
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    dataset: str = "auto",
    warm_fraction: float = 0.8,
    live_rate: float = 5.0,
    duration_s: float | None = None,
    synthetic_events: int = 20_000,
    progress: bool = True,
    echo: Any = print,
) -> int:
    """Run the demo until interrupted (or ``duration_s``); returns a process exit code."""
    from tqdm import tqdm

    from streams.broker import EmbeddedBroker
    from streams.publish import Publisher
    from streams.signals import stop_on_signals
    from streams.topics import ensure_topics

    logging.getLogger("kafka").setLevel(logging.ERROR)  # producer "slow task" chatter
    with stop_on_signals() as stop:
        out.mkdir(parents=True, exist_ok=True)
        children = Children(out / "logs")
        broker = EmbeddedBroker(log_path=out / "logs" / "broker.log")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        code = 0
        try:
            broker.start()
            settings = broker.settings()
            ensure_topics(settings)
            bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
            echo(f"embedded broker on {broker.bootstrap_servers}")
            children.start("encoder-worker", ["worker", "encoder", *bootstrap], CHILD_ENV)
            children.start(
                "interests-worker",
                ["worker", "interests", *bootstrap, "--data-dir", str(out / "interests-worker")],
                CHILD_ENV,
            )
            children.start(
                "api",
                [
                    "serve",
                    *bootstrap,
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(out / "serving"),
                    "--snapshot-every-s",
                    "60",
                ],
                CHILD_ENV,
            )
            data = load_sample(dataset, synthetic_events=synthetic_events)
            n_warm = int(len(data.engagements) * min(max(warm_fraction, 0.0), 1.0))
            warm = shift_to_now(data.engagements[:n_warm], int(time.time() * 1000))
            rest = data.engagements[n_warm:]
            echo(
                f"sample data: {data.name}, {len(data.items)} items, {len(data.engagements)} events"
            )
            # Ctrl-C only sets ``stop``: every phase below checks it, so it takes effect at once.
            with Publisher(settings) as pub:
                for item in tqdm(data.items, desc="items", unit="item", disable=not progress):
                    if stop.is_set():
                        break
                    pub.publish(item)
                pub.flush()
                for chunk in tqdm(
                    range(0, len(warm), 1000), desc="engagements", unit="k ev", disable=not progress
                ):
                    if stop.is_set():
                        break
                    pub.publish_many(warm[chunk : chunk + 1000])
            url = f"http://{host}:{port}/"
            if not _wait_http(url + "healthz", 60, children, stop):
                if stop.is_set():
                    echo("interrupted while starting")
                    return 0
                echo(f"the API did not come up; see {out / 'logs'}")
                return 1
            echo(f"dashboard: {url}   (API docs: {url}docs; Ctrl-C to stop)")
            code = _replay_live(
                settings, rest, live_rate, stop, children, started, duration_s, echo
            )
        finally:
            children.stop()
            broker.stop()
            echo("demo stopped")
        return code


def _replay_live(
    settings: Any,
    rest: Sequence[Engagement],
    rate: float,
    stop: threading.Event,
    children: Children,
    started: float,
    duration_s: float | None,
    echo: Any,
) -> int:
    """Publish the remaining events at ``rate`` per second, stamped with the time they are sent."""
    from streams.publish import Publisher

    sent = 0
    with Publisher(settings, linger_ms=0) as pub:
        while not stop.is_set():
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if dead := children.dead():
                echo(f"stopping: {', '.join(dead)} exited (see the logs)")
                return 1
            if rate > 0 and sent < len(rest):
                ev = rest[sent]
                pub.publish(ev.model_copy(update={"ts": int(time.time() * 1000)}))
                pub.flush()
                sent += 1
                stop.wait(1.0 / rate)
            else:
                stop.wait(0.5)
    echo(f"replayed {sent} live events")
    return 0

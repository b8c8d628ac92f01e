"""Helpers for tests that run recstream's workers as real processes against the broker."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from streams.broker import EMBEDDED_ENV
from streams.interests import InterestClusters, InterestConfig
from streams.interests.state_format import STATE_HEADER
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import Engagement, ItemEmbedding, UserInterests, decode_for_topic
from streams.settings import KafkaSettings
from streams.topics import ITEM_EMBEDDINGS, USER_INTERESTS
from streams.workers.interests.app import STATE_POSITION
from streams.workers.interests.config import APP_ID


def topic_vectors(
    truth: dict[str, object], dim: int = 32, seed: int = 0, noise: float = 0.35
) -> dict[str, np.ndarray]:
    """Item vectors that cluster by the generator's latent topics."""
    rng = np.random.default_rng(seed)
    items = truth["items"]
    assert isinstance(items, dict)
    n_topics = max(items.values()) + 1
    centers = rng.normal(size=(n_topics, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = {}
    for item_id, topic in sorted(items.items()):
        v = centers[topic] + noise * rng.normal(size=dim) / np.sqrt(dim)
        out[item_id] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def publish_item_vectors(settings: KafkaSettings, vectors: dict[str, np.ndarray]) -> None:
    with Publisher(settings) as pub:
        for item_id, vec in vectors.items():
            rec = ItemEmbedding.from_vector(item_id, vec, encoder_version="test", source_ts=0)
            pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)


def offline_states(
    events: Iterable[Engagement],
    vectors: dict[str, np.ndarray],
    config: InterestConfig | None = None,
    *,
    view: bool = True,
) -> dict[str, bytes]:
    """What the pure engine computes for each user from the same events, no Kafka: as the
    worker publishes it (a view), or the full state its table holds."""
    states: dict[str, InterestClusters] = {}
    for ev in events:
        state = states.setdefault(ev.user_id, InterestClusters(config or InterestConfig()))
        state.learn_one(ev, vectors[ev.item_id])
    return {u: s.to_bytes(view=view) for u, s in states.items() if s.n_actions}


def latest_interests(settings: KafkaSettings) -> dict[str, UserInterests | None]:
    latest: dict[str, UserInterests | None] = {}
    for rec in read_topic(settings, USER_INTERESTS.name, idle_timeout_s=1.0):
        assert rec.key is not None
        latest[rec.key.decode()] = (
            None if rec.value is None else decode_for_topic(USER_INTERESTS.name, rec.value)
        )
    return latest


TABLE_CHANGELOG = f"{APP_ID}-interests-changelog"  # faust's name for the table's changelog


def table_states(settings: KafkaSettings) -> dict[str, bytes]:
    """Full states from the interests worker's table changelog (latest per user), without the
    (partition, offset) each value starts with."""
    states: dict[str, bytes] = {}
    for rec in read_topic(settings, TABLE_CHANGELOG, idle_timeout_s=1.0):
        assert rec.key is not None
        user = rec.key.decode()
        if user.startswith('"'):
            user = json.loads(user)
        if rec.value is None:
            states.pop(user, None)
        else:
            states[user] = rec.value[STATE_POSITION.size :]
    return states


def worker_states(settings: KafkaSettings) -> dict[str, bytes]:
    return {
        u: base64.b64decode(r.state or "")
        for u, r in latest_interests(settings).items()
        if r is not None
    }


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.5,
    what: str = "",
    alive: Sequence[subprocess.Popen[bytes]] = (),
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate``; fail early if one of the ``alive`` processes died. On a timeout the
    failure says what ``explain`` returns (what is still wrong)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p.args for p in alive if p.poll() is not None]
        if dead:
            raise AssertionError(f"process exited while waiting for {what}: {dead}")
        if predicate():
            return
        time.sleep(interval_s)
    detail = f": {explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}{detail}")


def state_differences(got: dict[str, bytes], expected: dict[str, bytes], shown: int = 5) -> str:
    """Which users' published states differ from the expected ones, and how: actions held,
    events applied and the last event id of each side (read from the state header)."""

    def summary(blob: bytes | None) -> str:
        if blob is None:
            return "none"
        fields = struct.unpack_from(STATE_HEADER, blob)
        n, applied, last_len = fields[3], fields[5], fields[8]
        start = struct.calcsize(STATE_HEADER)
        last = blob[start : start + last_len].decode(errors="replace")
        return f"{n} actions, {applied} applied, last {last}"

    users = sorted(u for u in got.keys() | expected.keys() if got.get(u) != expected.get(u))
    if not users:
        return "no user differs"
    shown_users = "; ".join(
        f"{u}: got {summary(got.get(u))}, expected {summary(expected.get(u))}"
        for u in users[:shown]
    )
    return f"{len(users)} of {len(expected)} users differ ({shown_users})"


def start_interests_worker(
    bootstrap: str, data_dir: Path, *, extra: Sequence[str] = (), log: Path | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **EMBEDDED_ENV, "PYTHONUNBUFFERED": "1"}
    out = open(log or data_dir.with_suffix(".log"), "ab")  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "worker",
            "interests",
            "--bootstrap-servers",
            bootstrap,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

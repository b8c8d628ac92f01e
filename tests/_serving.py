"""Helpers for the serving tests: a small world on the broker, records as the worker makes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.datasets.generated import GeneratedData, generate
from serving.readmodels import ReadModelConfig, ReadModels
from streams.interests import InterestClusters
from streams.publish import Publisher
from streams.schemas import Engagement, ItemEmbedding, UserInterests
from streams.settings import KafkaSettings
from streams.topics import ITEM_EMBEDDINGS, USER_INTERESTS
from streams.workers.interests.engine_process import Publishing
from streams.workers.interests.engine_process import interests_record as worker_interests_record


@dataclass
class World:
    data: GeneratedData
    vectors: dict[str, np.ndarray]
    states: dict[str, InterestClusters]

    def topic_of(self, item_id: str) -> int:
        items = self.data.truth["items"]
        assert isinstance(items, dict)
        return int(items[item_id])

    def category_of(self, item_id: str) -> str:
        return next(it.category for it in self.data.items if it.item_id == item_id) or ""


def topic_vectors(data: GeneratedData, dim: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Item vectors clustered by the generator's latent topics."""
    rng = np.random.default_rng(seed)
    items = data.truth["items"]
    assert isinstance(items, dict)
    centers = rng.normal(size=(max(items.values()) + 1, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = {}
    for item_id, topic in sorted(items.items()):
        v = centers[topic] + 0.35 * rng.normal(size=dim) / np.sqrt(dim)
        out[item_id] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def make_world(users: int = 30, items: int = 400, events: int = 3000, seed: int = 5) -> World:
    data = generate(users=users, items=items, events=events, seed=seed)
    vectors = topic_vectors(data)
    states: dict[str, InterestClusters] = {}
    for ev in data.engagements:
        states.setdefault(ev.user_id, InterestClusters()).learn_one(ev, vectors[ev.item_id])
    return World(data, vectors, states)


def embedding_record(
    item_id: str, vector: np.ndarray, text: str = "", category: str | None = None, ts: int = 0
) -> ItemEmbedding:
    return ItemEmbedding.from_vector(
        item_id, vector, encoder_version="test", source_ts=ts, text=text, category=category
    )


def publish_items(settings: KafkaSettings, world: World) -> None:
    with Publisher(settings) as pub:
        for it in world.data.items:
            rec = embedding_record(
                it.item_id, world.vectors[it.item_id], it.text, it.category, it.ts
            )
            pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)


def interests_record(user_id: str, state: InterestClusters, published: int = 10) -> UserInterests:
    """The record the interests worker publishes for this state (its own ``interests_record``,
    no state bytes)."""
    value = worker_interests_record(user_id, state, b"", Publishing(interests=published))
    return UserInterests.model_validate_json(value)


def publish_users(
    settings: KafkaSettings, world: World, users: Iterable[str] | None = None
) -> None:
    with Publisher(settings) as pub:
        for user_id in users if users is not None else world.states:
            rec = interests_record(user_id, world.states[user_id])
            pub.send(USER_INTERESTS.name, rec.to_json(), key=rec.key)


def publish_world(settings: KafkaSettings, world: World) -> None:
    """The world's item embeddings and user interests, as the workers would have published."""
    publish_items(settings, world)
    publish_users(settings, world)


def engage(world: World, user_id: str, item_ids: Iterable[str], ts: int) -> list[Engagement]:
    """Apply new engagements to the world's state for the user (as the worker would)."""
    out = []
    for n, item_id in enumerate(item_ids):
        ev = Engagement(
            event_id=f"x-{user_id}-{ts}-{n}",
            user_id=user_id,
            item_id=item_id,
            action="like",
            ts=ts + n,
        )
        world.states[user_id].learn_one(ev, world.vectors[item_id])
        out.append(ev)
    return out


def read_models(settings: KafkaSettings, data_dir: Path, **config: object) -> ReadModels:
    cfg = ReadModelConfig(**{"data_dir": data_dir, "snapshot_every_s": 0, **config})  # type: ignore[arg-type]
    return ReadModels(settings, cfg)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str = "") -> float:
    """Poll until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


@contextmanager
def live_server(app: Any, ready: Callable[[], bool], timeout_s: float = 30) -> Iterator[str]:
    """``app`` served by uvicorn on a free 127.0.0.1 port (a thread of this process), with the
    HTTP protocol ``recstream serve`` runs; yields the base URL once ``ready()``, stops on exit."""
    import uvicorn

    from serving.api.protocol import ProblemHttpToolsProtocol
    from streams.broker import free_port

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", http=ProblemHttpToolsProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started and ready(), timeout_s, "the API to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)

"""End to end on the embedded broker: engagements -> real interests worker -> serving API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from serving.api import create_app
from streams.broker import EmbeddedBroker
from streams.publish import Publisher
from streams.schemas import Engagement
from streams.topics import ITEM_EMBEDDINGS
from tests._serving import embedding_record, make_world, publish_items, read_models, wait_until
from tests._streaming import latest_interests, start_interests_worker, stop


def test_live_recommendations_follow_events_items_and_deletes(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=20, items=400, events=2000, seed=9)
    publish_items(settings, world)
    with Publisher(settings) as pub:
        pub.publish_many(world.data.engagements)
    worker = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "worker")
    rm = read_models(settings, tmp_path / "serving")
    try:
        with TestClient(create_app(rm, settings, api_keys=[])) as api:

            def recs(user: str, k: int = 20) -> dict[str, Any]:
                r = api.get(f"/users/{user}/recommendations", params={"k": k, "explain": True})
                assert r.status_code == 200, r.text
                return r.json()

            user = max(world.states, key=lambda u: world.states[u].n_actions)
            target = world.states[user].n_actions

            def caught_up() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                profile = rm.profile(user)
                return profile is not None and profile.n_actions == target

            wait_until(
                caught_up,
                90,
                "the worker's interests for the user",
            )
            assert worker.poll() is None

            # Explain names real medoids of the user (as the worker computed them).
            body = recs(user)
            assert not body["cold_start"] and len(body["items"]) == 20
            record = latest_interests(settings)[user]
            assert record is not None
            medoids = {i.medoid for i in record.interests}
            assert {i["explain"]["medoid"] for i in body["items"]} <= medoids

            # New engagements in a topic the user never touched change the recommendations.
            seen_topics = {world.topic_of(i) for i in world.states[user].seen_items}
            fresh = [t for t in range(24) if t not in seen_topics]
            took_s: list[float] = []
            for round_, topic in enumerate(fresh[:3]):
                items = [i for i in world.vectors if world.topic_of(i) == topic][:8]
                now = int(time.time() * 1000)
                with Publisher(settings, linger_ms=0) as pub:
                    for n, item_id in enumerate(items):
                        pub.publish(
                            Engagement(
                                event_id=f"live-{round_}-{n}",
                                user_id=user,
                                item_id=item_id,
                                action="save",
                                ts=now + n,
                            )
                        )
                took = wait_until(
                    lambda topic=topic: any(  # type: ignore[misc]
                        world.topic_of(i["item_id"]) == topic for i in recs(user)["items"]
                    ),
                    10 if round_ == 0 else 3,
                    f"recommendations from topic {topic}",
                )
                if round_:  # the first round warms the worker's caches up
                    took_s.append(took)
            # Within 1 s (the best of two rounds: the CPU is shared with other test processes).
            assert min(took_s) < 1.0, f"recommendations changed only after {took_s} s"
            assert recs(user)["freshness_ms"] is not None

            # A new item right next to the user's top interest becomes recommendable.
            top = recs(user)
            medoid = top["interests"][0]["medoid"]
            assert rm.index is not None
            vec = rm.index.vector(medoid)
            assert vec is not None
            near = vec + 0.01 * np.random.default_rng(0).normal(size=vec.shape).astype(np.float32)
            rec = embedding_record("new-arrival", near, "a brand new arrival", "new")
            with Publisher(settings) as pub:
                pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)
            wait_until(
                lambda: "new-arrival" in {i["item_id"] for i in recs(user)["items"]},
                5,
                "the new item in the recommendations",
            )

            # A deleted item is never returned once the replica has applied the delete.
            victim = recs(user)["items"][0]["item_id"]
            with Publisher(settings) as pub:
                pub.send(ITEM_EMBEDDINGS.name, None, key=victim.encode())
            wait_until(lambda: victim not in rm.catalog, 5, "the delete")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert victim not in {i["item_id"] for i in recs(user, 50)["items"]}
                sim = api.get(f"/items/{top['items'][1]['item_id']}/similar", params={"k": 50})
                assert victim not in {i["item_id"] for i in sim.json()["items"]}

            # An unknown user gets the cold-start list: popular items, marked as such.
            cold = recs("someone-new")
            assert cold["cold_start"] and cold["reason"] == "unknown user"
            assert len(cold["items"]) == 20
            assert all(i["explain"]["source"] == "popular" for i in cold["items"])
            assert victim not in {i["item_id"] for i in cold["items"]}
    finally:
        stop(worker)

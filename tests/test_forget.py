"""Deletes that forget: after ``user_deleted`` and an item's tombstone, neither id is left in any
API answer, in the interests worker's or the serving replica's files, or as the live record of
its key on the changelogs and ``user-interests``.

One real interests worker (a subprocess) and one serving replica (in this process) on the
embedded broker; tens of events.

The files are searched for each id's core (``~7f3a9c!``): its 4-byte windows occur nowhere
else, so neither RocksDB's key prefix compression nor Snappy's back-references (4 bytes or
more) can split it, and wherever the id is stored its core is there byte for byte. The vectors
are random bytes. Before the deletes the same search finds every one of them (the search is
not blind); RocksDB's info log writes keys in hex, so the hex forms are searched too.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.api import create_app
from stores import normalize_rows
from streams.broker import EmbeddedBroker, free_port
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import Engagement, UserDeleted
from streams.topics import ITEM_EMBEDDINGS, USER_INTERESTS
from streams.workers.interests.config import APP_ID
from tests._serving import embedding_record, read_models, wait_until
from tests._streaming import TABLE_CHANGELOG, start_interests_worker, stop

USER = "u~7f3a9c!gone"
ITEM = "x~2b8e41!away"
TITLE = "t~c05d17!lost"
UNEMBEDDED = "never-embedded-item-9e6f20"  # the deleted user's parked engagement waits for it
KEPT_USERS = ("kept-user-a", "kept-user-b", "kept-user-c")
PARKED_CHANGELOG = f"{APP_ID}-parked-changelog"
T0 = 1_700_000_000_000


def _vectors(dim: int = 16) -> dict[str, np.ndarray]:
    """Four topics of eight items; the deleted item sits at topic 0's centre (a likely medoid)."""
    rng = np.random.default_rng(7)
    centers = normalize_rows(rng.normal(size=(4, dim)))
    out = {ITEM: centers[0]}
    for topic in range(4):
        for n in range(8 if topic else 7):
            v = centers[topic] + 0.3 * rng.normal(size=dim) / np.sqrt(dim)
            out[f"item-{topic}-{n}"] = v
    return {i: normalize_rows(v[None, :])[0] for i, v in out.items()}


def _engagements() -> list[Engagement]:
    """Every user engages with the deleted item and with items of two topics."""
    events = []
    for u, user in enumerate((USER, *KEPT_USERS)):
        items = [
            ITEM,
            *(f"item-0-{n}" for n in range(4)),
            *(f"item-{1 + u % 3}-{n}" for n in range(4)),
        ]
        for n, item in enumerate(items):
            events.append(
                Engagement(
                    event_id=f"{user}-{n}", user_id=user, item_id=item, action="like", ts=T0 + n
                )
            )
    events.append(
        Engagement(
            event_id=f"{USER}-parked", user_id=USER, item_id=UNEMBEDDED, action="view", ts=T0 + 50
        )
    )
    return events


def _metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return -1.0
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return -1.0


def _files_holding(roots: Iterable[Path], needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{file: names of the needles its raw bytes contain}, over every file under ``roots``."""
    hits: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            raw = path.read_bytes()
            found = [name for name, needle in needles.items() if needle in raw]
            if found:
                hits[str(path.relative_to(root.parent))] = found
    return hits


def _last_per_key(settings: object, topic: str) -> dict[str, bytes | None]:
    last: dict[str, bytes | None] = {}
    for rec in read_topic(settings, topic, idle_timeout_s=1.0):  # type: ignore[arg-type]
        assert rec.key is not None
        last[rec.key.decode()] = rec.value
    return last


def test_a_deleted_user_and_item_leave_no_answer_no_file_and_a_tombstone(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    vectors = _vectors()
    with Publisher(settings) as pub:
        for item_id, vec in vectors.items():
            title = TITLE if item_id == ITEM else f"title of {item_id}"
            rec = embedding_record(item_id, vec, title, "c0" if "-0-" in item_id else "c1")
            pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)
        pub.publish_many(_engagements())
    port = free_port()
    worker_dir, replica_dir = tmp_path / "worker", tmp_path / "serving"
    worker = start_interests_worker(
        fresh_broker.bootstrap_servers,
        worker_dir,
        extra=["--metrics-port", str(port), "--purge-every", "0"],
    )
    rm = read_models(settings, replica_dir)
    needles = {
        "user id": USER[1:-4].encode(),
        "item id": ITEM[1:-4].encode(),
        "item title": TITLE[1:-4].encode(),
        "item vector": vectors[ITEM].tobytes(),  # as published; serving stores it normalized
        "item vector as stored": normalize_rows(vectors[ITEM][None, :])[0].tobytes(),
    }
    in_hex = {f"{name} in hex": raw.hex().upper().encode() for name, raw in needles.items()}
    try:
        with TestClient(create_app(rm, settings, api_keys=[])) as api:

            def get(path: str, **params: object) -> tuple[int, str]:
                r = api.get(path, params=params)
                assert r.status_code < 500, r.text
                return r.status_code, r.text

            def served() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                profiles = [rm.profile(u) for u in (USER, *KEPT_USERS)]
                return all(p is not None and p.n_actions == 9 for p in profiles)

            wait_until(served, 90, "every user's interests served")
            assert ITEM in get(f"/users/{KEPT_USERS[0]}/interests")[1]
            assert USER in get("/users", limit=500)[1]
            # The search finds what is there: the replica's files now hold every needle.
            rm.snapshot()
            before = _files_holding([replica_dir], needles)
            assert {n for names in before.values() for n in names} == set(needles), before

            with Publisher(settings) as pub:
                pub.publish(UserDeleted(user_id=USER, ts=T0 + 100))
                pub.send(ITEM_EMBEDDINGS.name, None, key=ITEM.encode())

            def forgotten() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                if rm.profile(USER) is not None or ITEM in rm.catalog:
                    return False
                for user in KEPT_USERS:
                    profile = rm.profile(user)
                    if profile is None or ITEM in profile.seen:
                        return False
                    if any(ITEM in (i.medoid, *i.members) for i in profile.interests):
                        return False
                return True

            wait_until(forgotten, 30, "the user and the item forgotten by the replica")

            # (a) No answer names either id (but the deleted user's own requests, which echo it).
            status, body = get(f"/users/{USER}/recommendations", k=50, explain=True)
            cold = json.loads(body)
            assert status == 200 and cold["cold_start"] and cold["reason"] == "unknown user"
            assert ITEM not in body
            assert get(f"/users/{USER}/interests")[0] == 404
            assert get(f"/users/{USER}/interests", points=True)[0] == 404
            assert get(f"/items/{ITEM}")[0] == 404
            assert get(f"/items/{ITEM}/similar")[0] == 404
            answers = [get("/users", limit=500), get("/users/nobody/recommendations", k=50)]
            for user in KEPT_USERS:
                answers += [
                    get(f"/users/{user}/recommendations", k=50, explain=True),
                    get(f"/users/{user}/recommendations", k=50, explain=True, exclude_seen=False),
                    get(f"/users/{user}/interests"),
                    get(f"/users/{user}/interests", points=True),
                ]
            answers += [get(f"/items/{i}/similar", k=50) for i in vectors if i != ITEM]
            answers += [get(f"/items/{i}") for i in vectors if i != ITEM]
            assert all(status == 200 for status, _ in answers)
            leaks = [body for _, body in answers if USER in body or ITEM in body or TITLE in body]
            assert not leaks, leaks[:3]

            # (b) The worker purges its stores of what it forgot; the replica's next snapshot
            # carries neither id and purges its stores.
            wait_until(
                lambda: (
                    _metric(port, "recstream_interest_stores_to_purge") == 0
                    and _metric(port, "recstream_interest_purges_total") >= 1
                ),
                30,
                "the worker's purge",
            )
            rm.snapshot()
            left = _files_holding([worker_dir, replica_dir], needles | in_hex)
            assert not left, left

            # (c) The last record of the user's key is a tombstone on each changelog and on
            # user-interests; the kept users' last records no longer name the item.
            quoted = json.dumps(USER)
            assert _last_per_key(settings, TABLE_CHANGELOG)[quoted] is None
            assert _last_per_key(settings, PARKED_CHANGELOG)[quoted] is None
            interests = _last_per_key(settings, USER_INTERESTS.name)
            assert interests[USER] is None
            for user in KEPT_USERS:
                record = interests[user]
                assert record is not None
                published = json.loads(record)
                assert ITEM not in json.dumps(published["interests"])
                assert ITEM not in published["actions"]["items"]
            assert _last_per_key(settings, TABLE_CHANGELOG)[json.dumps(KEPT_USERS[0])] is not None
    finally:
        stop(worker)
        rm.close()
    # Stopped cleanly (the worker's tables flushed, the replica's closing snapshot): still none.
    left = _files_holding([worker_dir, replica_dir], needles | in_hex)
    assert not left, left

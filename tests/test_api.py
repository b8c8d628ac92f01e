"""The HTTP API over live read models: answers, problem details, API keys, events into Kafka."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.api import create_app
from streams.broker import EmbeddedBroker
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import Engagement, Item, decode_for_topic
from streams.topics import ENGAGEMENTS, ITEMS, USER_INTERESTS
from tests._serving import (
    World,
    interests_record,
    make_world,
    publish_world,
    read_models,
    wait_until,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(users=20, items=300, events=2000, seed=3)


@pytest.fixture(scope="module")
def api(
    broker: EmbeddedBroker, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings_ = broker.settings()
    publish_world(settings_, world)
    rm = read_models(settings_, tmp_path_factory.mktemp("api"))
    with TestClient(create_app(rm, settings_, api_keys=[])) as client:
        assert rm.wait_ready(30), rm.status()
        yield client


def _problem(r: Any) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    body = r.json()
    assert body["status"] == r.status_code and body["title"] and body["detail"]
    return body


def test_recommendations_explain_names_the_users_real_medoids(
    api: TestClient, world: World
) -> None:
    user = max(world.states, key=lambda u: world.states[u].n_actions)
    r = api.get(f"/users/{user}/recommendations", params={"k": 12, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["cold_start"] and len(body["items"]) == 12
    real_medoids = {i.medoid for i in world.states[user].interests(world.states[user].last_ts)}
    assert {i["medoid"] for i in body["interests"]} <= real_medoids
    for item in body["items"]:
        assert item["explain"]["source"] == "interest"
        assert item["explain"]["medoid"] in real_medoids
        assert item["item_id"] not in world.states[user].seen_items
        assert item["title"]
    seen = api.get(f"/users/{user}/recommendations", params={"k": 50, "exclude_seen": False})
    assert set(world.states[user].seen_items) & {i["item_id"] for i in seen.json()["items"]}


def test_unknown_user_gets_cold_start_and_interests_404(api: TestClient) -> None:
    r = api.get("/users/nobody-at-all/recommendations")
    assert r.status_code == 200 and r.json()["cold_start"] is True
    assert _problem(api.get("/users/nobody-at-all/interests"))["status"] == 404


def test_interests_similar_items_and_category_filter(api: TestClient, world: World) -> None:
    user = next(iter(world.states))
    body = api.get(f"/users/{user}/interests", params={"points": True}).json()
    assert body["interests"] and body["points"]
    assert {p["interest"] for p in body["points"]} <= set(range(len(body["interests"])))
    assert {p["item_id"] for p in body["points"] if p["medoid"]} <= {
        i["medoid"] for i in body["interests"]
    }
    similar = api.get("/items/i3/similar", params={"k": 5}).json()["items"]
    assert len(similar) == 5 and "i3" not in {s["item_id"] for s in similar}
    cat = world.category_of("i3")
    only = api.get("/items/i3/similar", params={"k": 5, "category": cat}).json()["items"]
    assert only and all(s["category"] == cat for s in only)
    assert _problem(api.get("/items/no-such-item/similar"))["status"] == 404


def test_a_record_of_an_older_worker_without_actions_is_still_served(
    api: TestClient, broker: EmbeddedBroker, world: World
) -> None:
    """Such a record tells its interests (and carries engine bytes serving no longer reads):
    seen items are the medoids and members, the projection has no points."""
    user = next(iter(world.states))
    state = world.states[user]
    older = json.loads(interests_record(user, state).to_json())
    del older["actions"]
    older.update(user_id="older-worker-user", state=base64.b64encode(state.to_bytes()).decode())
    with Publisher(broker.settings()) as pub:
        pub.send(USER_INTERESTS.name, json.dumps(older).encode(), key=b"older-worker-user")
    # Applied live, the record's cached profile tells when (a moment after the store has it).
    wait_until(
        lambda: bool(api.get("/users/older-worker-user/interests").json().get("applied_ms")),
        30,
        "the record applied",
    )
    body = api.get("/users/older-worker-user/interests", params={"points": True}).json()
    assert body["points"] == []
    assert body["freshness_ms"] == max(body["applied_ms"] - older["last_event_ts"], 0)
    assert [i["medoid"] for i in body["interests"]] == [i["medoid"] for i in older["interests"]]
    told = {m for i in older["interests"] for m in (i["medoid"], *i["members"])}
    recs = api.get("/users/older-worker-user/recommendations", params={"k": 30}).json()
    assert not recs["cold_start"] and len(recs["items"]) == 30
    assert not told & {i["item_id"] for i in recs["items"]}


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/users/u1/recommendations", {"k": 0}),
        ("/users/u1/recommendations", {"k": 201}),
        ("/users/u1/recommendations", {"k": "many"}),
        ("/users/u1/recommendations", {"explain": "perhaps"}),
        ("/users/u1/recommendations", {"category": ""}),
        ("/users/%20bad%20/recommendations", {}),
        ("/users/" + "x" * 300 + "/recommendations", {}),
        ("/items/i1/similar", {"k": -3}),
    ],
)
def test_bad_queries_get_422_problem_details(api: TestClient, path: str, params: dict) -> None:
    r = api.get(path, params=params)
    assert r.status_code == 422
    _problem(r)


def test_post_events_validates_then_publishes_to_kafka(
    api: TestClient, broker: EmbeddedBroker
) -> None:
    good = [
        {
            "type": "engagement",
            "event_id": "api-1",
            "user_id": "api-user",
            "item_id": "i1",
            "action": "click",
            "ts": 1,
        },
        {"type": "item", "item_id": "api-item", "text": "posted item", "ts": 2},
    ]
    r = api.post("/events", json=good)
    assert r.status_code == 202 and r.json() == {
        "accepted": 2,
        "topics": {"engagements": 1, "items": 1},
    }
    engagements = list(read_topic(broker.settings(), ENGAGEMENTS.name, idle_timeout_s=1))
    assert [
        decode_for_topic(ENGAGEMENTS.name, rec.value)
        for rec in engagements
        if rec.key == b"api-user"
    ] == [Engagement.model_validate(good[0])]
    items = list(read_topic(broker.settings(), ITEMS.name, idle_timeout_s=1))
    assert [decode_for_topic(ITEMS.name, rec.value) for rec in items if rec.key == b"api-item"] == [
        Item.model_validate(good[1])
    ]

    bad = [
        ({"type": "engagement", "user_id": "u"}, "missing field"),
        ({"type": "user_interests"}, "type must be one of"),
        ([], "no events"),
        ("just a string", None),
        ({**good[0], "ts": -5}, "ts"),
    ]
    for payload, words in bad:
        r = api.post("/events", json=payload)
        assert r.status_code == 422, (payload, r.text)
        if words:
            assert words in _problem(r)["detail"]
    r = api.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    _problem(r)


def test_health_ready_metrics_and_dashboard_page(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    metrics = api.get("/metrics").text
    for name in (
        "recstream_http_request_seconds",
        "recstream_serving_index_items",
        "recstream_serving_consumer_lag",
        "recstream_serving_freshness_seconds",
    ):
        assert name in metrics
    page = api.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert api.get("/openapi.json").json()["paths"]["/users/{user_id}/recommendations"]


def test_api_keys_guard_everything_but_health(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSTREAM_API_KEYS", "k1, k2")
    rm = read_models(broker.settings(), tmp_path / "keys")
    with TestClient(create_app(rm)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code in (200, 503)
        denied = client.get("/users/u1/recommendations")
        assert denied.status_code == 401 and _problem(denied)
        assert (
            client.get("/users/u1/recommendations", headers={"X-API-Key": "nope"}).status_code
            == 401
        )
        ok = client.get("/users/u1/recommendations", headers={"X-API-Key": "k2"})
        assert ok.status_code == 200
        for method, path in [
            ("GET", "/users/u1/interests"),
            ("GET", "/users"),
            ("GET", "/items/i1"),
            ("GET", "/items/i1/similar"),
            ("POST", "/events"),
        ]:
            r = client.request(method, path, json=[] if method == "POST" else None)
            assert r.status_code == 401 and _problem(r), (method, path)


_ID_CHARS = string.ascii_letters + string.digits + " -_.%\t\x00\u00e9\u4e2d/?#"


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=st.text(_ID_CHARS, min_size=0, max_size=300),
    k=st.one_of(st.integers(-10, 400), st.text(max_size=5)),
    explain=st.one_of(st.booleans(), st.text(max_size=4)),
    category=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_query_gets_an_answer_or_a_4xx_never_a_5xx(
    api: TestClient, user: str, k: object, explain: object, category: str | None
) -> None:
    params = {"k": k, "explain": explain}
    if category is not None:
        params["category"] = category
    r = api.get(f"/users/{quote(user, safe='')}/recommendations", params=params)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        _problem(r)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=12,
)
_event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["engagement", "item", "item_deleted", "user_deleted", "bogus"])},
    optional={
        "event_id": _json,
        "user_id": _json,
        "item_id": _json,
        "action": _json,
        "ts": _json,
        "weight": _json,
        "text": _json,
        "embedding": _json,
        "v": _json,
    },
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.one_of(_json, _event_like, st.lists(_event_like, max_size=3)))
def test_any_posted_json_gets_202_or_a_4xx_never_a_5xx(api: TestClient, payload: object) -> None:
    r = api.post("/events", json=payload)
    assert r.status_code in (202, 413, 422), r.text
    if r.status_code != 202:
        _problem(r)


_ANY_VALUE = st.one_of(
    st.integers(-(10**7), 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(_ID_CHARS, max_size=30),
)
_PARAMS = ["k", "explain", "exclude_seen", "sample", "category", "points", "max_points", "limit"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            "/users/{id}/recommendations",
            "/users/{id}/interests",
            "/items/{id}",
            "/items/{id}/similar",
            "/users",
        ]
    ),
    ident=st.one_of(st.sampled_from(["u1", "u3", "i1", "i7"]), st.text(_ID_CHARS, max_size=300)),
    params=st.dictionaries(st.sampled_from(_PARAMS), _ANY_VALUE, max_size=4),
)
def test_every_get_endpoint_answers_or_gets_a_4xx_never_a_5xx(
    api: TestClient, path: str, ident: str, params: dict[str, object]
) -> None:
    url = path.replace("{id}", quote(ident, safe=""))
    r = api.get(url, params={name: str(value) for name, value in params.items()})
    assert r.status_code < 500, (url, params, r.text)
    if r.status_code >= 400:
        _problem(r)
    else:
        assert r.headers["content-type"].startswith("application/json")

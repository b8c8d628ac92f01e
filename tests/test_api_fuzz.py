"""The HTTP API under hostile input, served for real: uvicorn with the HTTP protocol ``recstream
serve`` runs, on 127.0.0.1, its read models on an embedded broker of this module's own, API keys
on.

- ``test_schemathesis_over_every_operation``: schemathesis reads the live ``/openapi.json`` and
  sends each operation its examples, its coverage cases (boundaries, missing and wrong-typed
  values, schema violations) and ``RECSTREAM_FUZZ_EXAMPLES`` (40) generated requests,
  derandomized so every run sends the same ones, with every check it has: no 5xx, status
  codes, content types and bodies as the document declares, schema-violating requests refused,
  schema-valid ones accepted, 405 with ``Allow`` for undeclared methods, the API key required.
  ``RECSTREAM_FUZZ_SEED=<n>`` makes it a random run of that seed (a deeper search:
  ``RECSTREAM_FUZZ_EXAMPLES=500 RECSTREAM_FUZZ_SEED=$RANDOM pytest tests/test_api_fuzz.py``).
- ``test_fuzzing_reached_every_operation_and_kafka`` checks that run went through: every
  operation answered, protected ones past the key, and the events it posted are on the topics.
- Then the limits a client meets first, each a 4xx problem details: body size, JSON nesting,
  ``k``, ids of 100k characters, NUL and non-UTF-8 bytes in ids, NaN and Infinity.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from serving.api import create_app
from serving.api.limits import MAX_BODY_BYTES
from streams.broker import EmbeddedBroker
from streams.replay import read_topic
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEMS, ensure_topics
from tests._serving import live_server, make_world, publish_world, read_models

API_KEY = "fuzz-key"
EXAMPLES = int(os.environ.get("RECSTREAM_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("RECSTREAM_FUZZ_SEED")
OPERATIONS = {
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /users/{user_id}/recommendations",
    "GET /users/{user_id}/interests",
    "GET /users",
    "GET /items/{item_id}",
    "GET /items/{item_id}/similar",
    "POST /events",
}
UNPROTECTED = {"GET /healthz", "GET /readyz", "GET /metrics"}
# How this API refuses a request that breaks its schema (413: more than 1000 events).
REFUSALS = ["400", "401", "404", "405", "413", "415", "422"]


@dataclass
class LiveAPI:
    url: str
    host: str
    port: int
    settings: KafkaSettings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAPI]:
    with EmbeddedBroker() as broker:
        settings = broker.settings()
        ensure_topics(settings)
        publish_world(settings, make_world(users=12, items=200, events=1500, seed=22))
        rm = read_models(settings, tmp_path_factory.mktemp("fuzz"))
        app = create_app(rm, settings, api_keys=[API_KEY])
        with live_server(app, lambda: rm.ready) as url:
            host, port = url.removeprefix("http://").split(":")
            yield LiveAPI(url, host, int(port), settings)


@pytest.fixture(scope="module")
def client(live: LiveAPI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers={"X-API-Key": API_KEY}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def api_schema(live: LiveAPI) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "headers": {"X-API-Key": API_KEY},
            "generation": {
                "max-examples": EXAMPLES,
                "deterministic": SEED is None,
                "database": "none",
            },
            "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
            **({"seed": int(SEED)} if SEED is not None else {}),
        }
    )
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's fixture-loaded schemas rename `node._nodeid`, gone in pytest 9.2.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")
ANSWERS: Counter[tuple[str, int]] = Counter()
ACCEPTED: Counter[str] = Counter()


@schema.parametrize()
def test_schemathesis_over_every_operation(case: Any) -> None:
    response = case.call()
    ANSWERS[case.operation.label, response.status_code] += 1
    if response.status_code == 202:
        ACCEPTED.update(response.json()["topics"])
    case.validate_response(response)


def _topic_counts(settings: KafkaSettings) -> Counter[str]:
    return Counter(
        {
            topic: sum(1 for _ in read_topic(settings, topic, idle_timeout_s=1))
            for topic in (ENGAGEMENTS.name, ITEMS.name)
        }
    )


def test_fuzzing_reached_every_operation_and_kafka(live: LiveAPI) -> None:
    if not ANSWERS:
        pytest.skip("checks the run of test_schemathesis_over_every_operation")
    assert {label for label, _ in ANSWERS} == OPERATIONS
    assert [(label, s) for (label, s) in ANSWERS if s >= 500] == []
    for label in OPERATIONS:
        statuses = {s for (op, s) in ANSWERS if op == label}
        assert any(200 <= s < 300 for s in statuses), (label, statuses)
        if label not in UNPROTECTED:
            assert 422 in statuses, (label, statuses)
    # Every event answered 202 is on its topic, and nothing else reached the topics.
    assert ACCEPTED[ENGAGEMENTS.name] > 0 and ACCEPTED[ITEMS.name] > 0, ACCEPTED
    assert _topic_counts(live.settings) == ACCEPTED


# The limits a client meets first.


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def _raw_exchange(live: LiveAPI, head: bytes, body_parts: Iterable[bytes] = ()) -> bytes:
    """Send a request by hand (a head and the parts of its body given, which may stop short of
    what the head announces) and read the answer."""
    with socket.create_connection((live.host, live.port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
            _header(answer, b"content-length") or 0
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _header(answer: bytes, name: bytes) -> bytes | None:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _raw_problem(answer: bytes, status: int) -> dict[str, Any]:
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert _header(answer, b"content-type") == b"application/problem+json", answer[:400]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == status and body["title"] and body["detail"], body
    return dict(body)


def test_an_announced_25_mb_body_gets_413_before_it_is_sent(live: LiveAPI) -> None:
    size = 25 * 1000 * 1000
    started = time.monotonic()
    # Only the head and 1 KB go out: the answer must not wait for the other 25 MB.
    answer = _raw_exchange(
        live,
        b"POST /events HTTP/1.1\r\nHost: t\r\nX-API-Key: " + API_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n",
        [b"[" + b" " * 1023],
    )
    body = _raw_problem(answer, 413)
    assert body["detail"] == (
        f"request body of {size} bytes; at most {MAX_BODY_BYTES} bytes per request"
    )
    assert time.monotonic() - started < 5


def test_a_chunked_body_is_cut_at_the_cap_while_other_requests_are_answered(
    live: LiveAPI, client: httpx.Client
) -> None:
    chunk = b" " * (1 << 20)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    health: list[tuple[int, float]] = []

    def upload() -> Iterator[bytes]:
        yield b"1\r\n[\r\n"
        for n in range(MAX_BODY_BYTES // len(chunk) + 2):  # past the cap, never the final chunk
            if n == 4:  # mid-upload, the server answers others at once
                started = time.monotonic()
                health.append((client.get("/healthz").status_code, time.monotonic() - started))
            yield frame

    answer = _raw_exchange(
        live,
        b"POST /events HTTP/1.1\r\nHost: t\r\nX-API-Key: " + API_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        upload(),
    )
    body = _raw_problem(answer, 413)
    assert (
        body["detail"] == f"request body of more bytes; at most {MAX_BODY_BYTES} bytes per request"
    )
    assert health[0][0] == 200 and health[0][1] < 2, health


def test_a_25_mb_event_list_from_a_client_library_gets_413(client: httpx.Client) -> None:
    event = b'{"type":"item_deleted","item_id":"i1","ts":1},'
    payload = b"[" + event * (25_000_000 // len(event)) + event[:-1] + b"]"
    r = client.post("/events", content=payload, headers={"content-type": "application/json"})
    _problem(r, 413)
    chunks = (payload[i : i + (1 << 20)] for i in range(0, len(payload), 1 << 20))  # chunked
    r = client.post("/events", content=chunks, headers={"content-type": "application/json"})
    _problem(r, 413)


def test_more_than_1000_events_get_413(client: httpx.Client) -> None:
    events = [{"type": "item_deleted", "item_id": f"i{n}", "ts": 1} for n in range(1001)]
    assert _problem(client.post("/events", json=events), 413)["detail"] == (
        "1001 events; at most 1000 per request"
    )


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "depth limit exceeded"),
        (b'{"type":"item_deleted","item_id":"i1","ts":1,"x":' + b"[" * 100_000, "depth limit"),
        (
            b'{"type":"item_deleted","item_id":"i1","ts":1,"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
            "event 0: nested deeper than 254",
        ),
        (
            b'[{"type":"item_deleted","item_id":"i1","ts":1,"x":' + b"[" * 254 + b"]" * 254 + b"}]",
            "event 0: nested deeper than 254",
        ),
    ],
    ids=["100k-arrays", "100k-unclosed-in-an-event", "1000-in-an-event", "255-in-an-event"],
)
def test_deep_json_nesting_gets_422(client: httpx.Client, payload: bytes, detail: str) -> None:
    r = client.post("/events", content=payload, headers={"content-type": "application/json"})
    assert detail in _problem(r, 422)["detail"]


@pytest.mark.parametrize("k", ["0", "-1", "201", "1.5", "ten", "", "1e2", "99999999999999999999"])
@pytest.mark.parametrize("path", ["/users/u1/recommendations", "/items/i1/similar"])
def test_k_out_of_bounds_or_not_an_integer_gets_422(
    client: httpx.Client, path: str, k: str
) -> None:
    body = _problem(client.get(path, params={"k": k}), 422)
    assert body["errors"][0]["loc"] == ["query", "k"]


@pytest.mark.parametrize("path", ["/users/u1/recommendations", "/items/i1/similar"])
def test_k_at_its_bounds_is_answered(client: httpx.Client, path: str) -> None:
    # The index holds 200 items; similar items leave out i1 itself.
    expected = 200 if path.startswith("/users") else 199
    for k, n in ((1, 1), (200, expected)):
        r = client.get(path, params={"k": k, "exclude_seen": False})
        assert r.status_code == 200 and len(r.json()["items"]) == n, (k, r.text[:200])


def test_ids_of_100k_characters_get_4xx(live: LiveAPI, client: httpx.Client) -> None:
    long_id = "u" * 100_000
    # A URL this long never reaches the app: the HTTP parser refuses it (over 64 KiB).
    answer = _raw_exchange(
        live,
        f"GET /users/{long_id}/recommendations HTTP/1.1\r\nHost: t\r\n"
        f"X-API-Key: {API_KEY}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert "64 KiB" in _raw_problem(answer, 400)["detail"]
    r = client.get(f"/items/{'i' * 60_000}/similar")  # under 64 KiB: the app's own check
    assert _problem(r, 422)["errors"][0]["loc"] == ["path", "item_id"]
    event = {"type": "engagement", "event_id": "e", "user_id": long_id}
    event |= {"item_id": "i1", "action": "click", "ts": 1}
    r = client.post("/events", json=event)
    assert _problem(r, 422)["detail"] == (
        "event 0: invalid field 'user_id': String should have at most 256 characters"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/users/a%00b/recommendations", 422),  # NUL: not an id character
        ("/users/%00/interests", 422),
        ("/items/a%FFb", 400),  # not UTF-8
        ("/items/%C0%AF/similar", 400),  # an overlong UTF-8 form of "/"
        ("/users/%ED%A0%80/recommendations", 400),  # a UTF-16 surrogate, encoded
        ("/users/u1/recommendations?category=%FF", 400),
    ],
)
def test_nul_and_non_utf8_bytes_in_path_ids_get_4xx(
    client: httpx.Client, path: str, status: int
) -> None:
    _problem(client.get(path), status)


@pytest.mark.parametrize(
    ("user_id", "detail"),
    [
        (b"a\xffb", "str is not valid UTF-8"),  # raw non-UTF-8 byte
        (b"a\xed\xa0\x80b", "str is not valid UTF-8"),  # raw encoded surrogate
        (b"a\x00b", "unexpected control character"),  # raw NUL
        (b"a\\u0000b", "invalid field 'user_id': String should match pattern"),  # escaped NUL
        (b"a\\ud800b", "no low surrogate"),  # escaped lone surrogate
    ],
    ids=["raw-ff", "raw-surrogate", "raw-nul", "escaped-nul", "escaped-surrogate"],
)
def test_nul_and_non_utf8_bytes_in_body_ids_get_422(
    client: httpx.Client, user_id: bytes, detail: str
) -> None:
    payload = b'{"type":"engagement","event_id":"e","user_id":"' + user_id + b'",'
    payload += b'"item_id":"i1","action":"click","ts":1}'
    r = client.post("/events", content=payload, headers={"content-type": "application/json"})
    assert detail in _problem(r, 422)["detail"]


@pytest.mark.parametrize(
    ("field", "number", "detail"),
    [
        (b'"weight"', b"NaN", "NaN and Infinity are not JSON numbers"),
        (b'"weight"', b"-Infinity", "NaN and Infinity are not JSON numbers"),
        (b'"ts"', b"Infinity", "NaN and Infinity are not JSON numbers"),
        (b'"ts"', b"1e400", "number is infinity"),
        (b'"unknown"', b"NaN", "NaN and Infinity are not JSON numbers"),  # even where ignored
    ],
)
def test_nan_and_infinity_get_422_and_are_never_published(
    live: LiveAPI, client: httpx.Client, field: bytes, number: bytes, detail: str
) -> None:
    before = _topic_counts(live.settings)
    payload = b'[{"type":"engagement","event_id":"e","user_id":"u1","item_id":"i1",'
    payload += b'"action":"click","ts":1,' + field + b":" + number + b"}]"
    r = client.post("/events", content=payload, headers={"content-type": "application/json"})
    assert detail in _problem(r, 422)["detail"]
    item = b'{"type":"item","item_id":"nan-item","ts":1,"embedding":[1.0,NaN]}'
    r = client.post("/events", content=item, headers={"content-type": "application/json"})
    assert "NaN and Infinity are not JSON numbers" in _problem(r, 422)["detail"]
    assert _topic_counts(live.settings) == before


def test_a_body_that_is_not_json_gets_415_or_422(client: httpx.Client) -> None:
    event = b'{"type":"item_deleted","item_id":"i1","ts":1}'
    assert (
        "text/plain"
        in _problem(
            client.post("/events", content=event, headers={"content-type": "text/plain"}), 415
        )["detail"]
    )
    _problem(client.post("/events", content=b"", headers={"content-type": "application/json"}), 422)
    r = client.post("/events", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert "not JSON" in _problem(r, 422)["detail"]

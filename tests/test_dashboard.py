"""The dashboard in headless Chromium: clusters, projection and recommendations for a user.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package (its
own browser downloads are not used). Set ``RECSTREAM_SCREENSHOT_TO=path.png`` to keep a copy of
the screenshot (the README's ``docs/dashboard.png`` is made this way).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.api import create_app
from streams.broker import EmbeddedBroker, free_port
from streams.settings import KafkaSettings
from tests._serving import World, engage, make_world, publish_users, publish_world, read_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="no chromium binary (apt-get install chromium)"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def server(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> Iterator[tuple[str, str, World, KafkaSettings]]:
    import uvicorn

    settings = fresh_broker.settings()
    world = make_world(users=12, items=400, events=2500, seed=21)
    publish_world(settings, world)
    rm = read_models(settings, tmp_path / "serving")
    port = free_port()
    config = uvicorn.Config(
        create_app(rm, settings, api_keys=[]), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (srv.started and rm.ready):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    user = max(world.states, key=lambda u: world.states[u].n_clusters)
    yield f"http://127.0.0.1:{port}", user, world, settings
    srv.should_exit = True
    thread.join(timeout=15)


def test_dashboard_shows_clusters_projection_and_recommendations_live(
    server: tuple[str, str, World, KafkaSettings], tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base, user, world, settings = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/?user={user}")
            page.wait_for_selector(f"body[data-loaded-user='{user}']", timeout=15_000)
            clusters = page.locator("#clusters li.cluster")
            # The page lists exactly the API's interests and recommendation groups, in order.
            interests, recommended = page.evaluate(
                """async (u) => [
                    (await (await fetch(`/users/${u}/interests?points=true`)).json()).interests,
                    (await (await fetch(`/users/${u}/recommendations?k=20&explain=true`)).json())
                        .items,
                ]""",
                user,
            )
            assert len(interests) >= 2  # the fixture's user has several interests
            assert clusters.evaluate_all("els => els.map(e => e.dataset.medoid)") == [
                i["medoid"] for i in interests
            ]
            shown_groups = page.locator("#recs .rec-group").evaluate_all(
                "els => els.map(e => e.dataset.medoid)"
            )
            by_interest = dict.fromkeys(i["interest"] or "popular" for i in recommended)
            assert shown_groups == list(by_interest) and len(shown_groups) >= 2  # grouped
            assert page.locator("#recs .rec-item").count() == 20
            assert "personalized" in page.locator("#recs-kind").inner_text()
            # Every group is one of the user's interests (its medoid is listed as a cluster).
            medoids = set(clusters.evaluate_all("els => els.map(e => e.dataset.medoid)"))
            groups = page.locator("#recs .rec-group").evaluate_all(
                "els => els.map(e => e.dataset.medoid)"
            )
            assert set(groups) <= medoids
            # The projection is drawn: several colours on the canvas, not a blank box.
            colours = page.evaluate(
                """() => {
                    const c = document.getElementById('plot');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    const seen = new Set();
                    for (let i = 0; i < d.length; i += 4 * 17) if (d[i + 3] > 0)
                        seen.add(`${d[i] >> 4},${d[i + 1] >> 4},${d[i + 2] >> 4}`);
                    return seen.size;
                }"""
            )
            assert colours >= 3
            assert "freshness" in page.locator("#freshness").inner_text()
            options = page.locator("#user-select option")
            playwright.expect(options).to_have_count(len(world.states))  # once /users answered
            assert sorted(options.evaluate_all("els => els.map(e => e.value)")) == sorted(
                world.states
            )
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if keep := os.environ.get("RECSTREAM_SCREENSHOT_TO"):
                Path(keep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, keep)

            # The user takes up an interest they never had: the page follows by itself.
            seen_topics = {world.topic_of(i) for i in world.states[user].seen_items}
            fresh_topic = next(t for t in range(24) if t not in seen_topics)
            new_items = [i for i in world.vectors if world.topic_of(i) == fresh_topic][:6]
            engage(world, user, new_items, ts=world.states[user].last_ts + 1000)
            publish_users(settings, world, [user])
            page.wait_for_function(
                """(items) => [...document.querySelectorAll('#clusters li.cluster')]
                    .some(e => items.includes(e.dataset.medoid))""",
                arg=new_items,
                timeout=10_000,
            )
            page.wait_for_function(
                """(items) => [...document.querySelectorAll('#recs .rec-group')]
                    .some(e => items.includes(e.dataset.medoid))""",
                arg=new_items,
                timeout=10_000,
            )
            assert not errors, errors
        finally:
            browser.close()

"""``recstream demo``: every role as a real process on the embedded broker, stopped by Ctrl-C.

The encoder worker runs a tiny text encoder exported at test time (``RECSTREAM_MODEL_DIR``), so
the test does not spend a minute exporting MiniLM; everything else is what ``make demo`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from encoders.export import export_text_encoder
from encoders.text_model import build_tiny_text_encoder
from streams.broker import free_port
from tests._streaming import wait_for


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-encoder")
    export_text_encoder(root / "model", source=build_tiny_text_encoder(root / "source", dim=32))
    return root / "model"


class Demo:
    """``recstream demo`` in a subprocess, its stderr collected line by line."""

    def __init__(self, out: Path, port: int, model_dir: Path) -> None:
        env = {**os.environ, "RECSTREAM_MODEL_DIR": str(model_dir), "PYTHONUNBUFFERED": "1"}
        args = ["--out", str(out), "--port", str(port), "--dataset", "synthetic"]
        args += ["--events", "3000", "--live-rate", "20", "--quiet"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "demo", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def said(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in self.lines if (m := re.search(pattern, line))), None)

    def interrupt(self, timeout_s: float) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def demo(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[Demo, int]]:
    port = free_port()
    d = Demo(tmp_path / "demo", port, tiny_model_dir)
    try:
        yield d, port
    finally:
        d.kill()


def _listening(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _counted_engagements(api: str) -> float:
    text = httpx.get(api + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("topic") == "engagements" and sample.labels.get("outcome") in (
                "counted",
            ):
                return float(sample.value)
    return 0.0


def test_demo_serves_live_recommendations_and_stops_cleanly_on_ctrl_c(
    demo: tuple[Demo, int],
) -> None:
    d, port = demo
    api = f"http://127.0.0.1:{port}"
    wait_for(lambda: d.said(r"dashboard: http://") is not None, 120, what="the dashboard URL")
    broker = d.said(r"embedded broker on (\S+)")
    assert broker is not None and _listening(broker.group(1))

    def personal_user() -> str | None:
        users = httpx.get(api + "/users?limit=50", timeout=5).json()["users"]
        for u in users:
            recs = httpx.get(f"{api}/users/{u['user_id']}/recommendations?k=5", timeout=5).json()
            if not recs["cold_start"] and len(recs["items"]) == 5:
                return str(u["user_id"])
        return None

    wait_for(lambda: httpx.get(api + "/readyz", timeout=5).status_code == 200, 90, what="ready")
    wait_for(lambda: personal_user() is not None, 90, what="personal recommendations")
    # The rest of the log keeps arriving as live events.
    before = _counted_engagements(api)
    wait_for(lambda: _counted_engagements(api) > before, 20, what="live events")
    assert d.proc.poll() is None

    assert d.interrupt(timeout_s=60) == 0, d.lines
    assert d.said(r"replayed \d+ live events") and d.said("demo stopped"), d.lines
    # Every child went with it: nothing listens on the API's or the broker's port.
    assert not _listening(f"127.0.0.1:{port}")
    assert not _listening(broker.group(1))


def test_ctrl_c_while_the_demo_is_starting_stops_it_at_once(demo: tuple[Demo, int]) -> None:
    d, port = demo
    wait_for(lambda: d.said(r"embedded broker on") is not None, 60, what="the broker")
    assert d.interrupt(timeout_s=30) == 0, d.lines
    assert d.said("demo stopped") and not d.said("dashboard: http://"), d.lines
    broker = d.said(r"embedded broker on (\S+)")
    assert broker is not None and not _listening(broker.group(1))
    assert not _listening(f"127.0.0.1:{port}")

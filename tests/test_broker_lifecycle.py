"""The embedded broker never outlives the process that started it (issue 24).

``recstream broker`` stops tansu on SIGTERM, SIGINT and SIGHUP, and the kernel kills tansu when
its parent dies any other way (SIGKILL included): afterwards no tansu holds the port, and a new
broker starts on it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from streams.broker import BrokerUnavailable, EmbeddedBroker, free_port, wait_for_kafka


def tansu_on(port: int) -> list[psutil.Process]:
    """Live tansu processes listening on ``127.0.0.1:port`` (reaped or zombie ones do not count)."""
    url = f"tcp://127.0.0.1:{port}"
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and url in proc.cmdline():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def assert_broker_gone(port: int, timeout_s: float = 5.0) -> None:
    """No tansu is left on ``port`` and a new broker starts there."""
    deadline = time.monotonic() + timeout_s
    while (left := tansu_on(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    with EmbeddedBroker(port=port) as again:  # raises if the port is still taken
        assert again.running


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name
)
def test_recstream_broker_leaves_no_tansu_behind(sig: signal.Signals) -> None:
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_kafka(f"127.0.0.1:{port}", timeout_s=30)
        assert [p.pid for p in tansu_on(port)] == [
            c.pid for c in psutil.Process(cli.pid).children()
        ]
        cli.send_signal(sig)
        out, _ = cli.communicate(timeout=15)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # The stop signals are a clean stop; SIGKILL leaves the broker to the kernel.
    assert cli.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0), out.decode()
    assert_broker_gone(port)


CHILD = """
import sys, threading, time
from streams.broker import EmbeddedBroker

if sys.argv[1] == "thread":  # started from a thread that has ended by the time we die
    brokers = []
    t = threading.Thread(target=lambda: brokers.append(EmbeddedBroker().start()))
    t.start()
    t.join()
    broker = brokers[0]
else:
    broker = EmbeddedBroker().start()
print(broker.port, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_an_embedded_broker_dies_with_its_process(started_from: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), started_from],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert len(tansu_on(port)) == 1
        child.kill()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert_broker_gone(port)


def test_a_broker_started_from_a_thread_outlives_the_thread() -> None:
    # The kernel's parent-death signal follows the thread that forked tansu, not the process.
    brokers: list[EmbeddedBroker] = []
    t = threading.Thread(target=lambda: brokers.append(EmbeddedBroker().start()))
    t.start()
    t.join()
    with brokers[0] as broker:
        time.sleep(0.2)
        assert broker.running
        wait_for_kafka(broker.bootstrap_servers, timeout_s=5)


def test_a_taken_port_is_refused_at_once() -> None:
    # tansu itself exits with status 0 there, and the broker already on the port would answer.
    with EmbeddedBroker() as first:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{first.port} is in use"):
            EmbeddedBroker(port=first.port).start()
        assert time.monotonic() - started < 1.0
        res = subprocess.run(
            [sys.executable, "-m", "serving.cli", "broker", "--port", str(first.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 1
        assert f"error: 127.0.0.1:{first.port} is in use" in res.stderr
        assert first.running
        assert len(tansu_on(first.port)) == 1

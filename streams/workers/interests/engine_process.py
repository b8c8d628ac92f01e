"""The interests engine in a process of its own, beside the worker's event loop.

The interests worker spends about half its time in faust's consume path (fetch, events, acks,
table writes, records out) and half in the engine (learn, medoids, state bytes): pure Python
and small numpy calls, one core at most under the GIL. ``EngineHost`` holds the users' states
and applies a batch of user jobs; ``EngineProcess`` runs one in a child process, so the engine
works on one core while the event loop consumes the next events on another.

The worker decides everything that needs its tables and the item store (``planning``:
redeliveries, parking, which vectors an event gets) and sends each user's job: the events to
learn, in order, and the stored state when the child may not hold that user. The child answers
with what changed, the state's bytes for the table and the ``user-interests`` record. Both
sides keep the same least-recently-used set of users (the worker mirrors which users the child
holds: the same operations in the same order), so a state crosses the pipe only when the child
lacks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from streams.interests import InterestClusters, InterestConfig
from streams.schemas import user_interests_json
from streams.workers.interests.config import ENGINE_PLACES, Publishing


def interests_record(
    user_id: str, state: InterestClusters, blob: bytes, publishing: Publishing
) -> bytes:
    """The user's ``user-interests`` record (``UserInterests`` JSON); ``blob`` is the state's
    ``to_bytes``."""
    now = state.last_ts
    interests, actions = state.published(publishing.interests, now, members=publishing.members)
    if publishing.state == "view":
        published: bytes | None = state.to_bytes(view=True)
    else:
        published = blob if publishing.state == "full" else None
    return user_interests_json(
        user_id=user_id,
        interests=interests,
        n_actions=state.n_actions,
        last_event_id=state.last_event_id,
        last_event_ts=now,
        updated_ms=int(time.time() * 1000),
        actions=actions,
        state=published,
    )


class Learn(NamedTuple):
    """One engagement to apply; ``row`` is its item's row in the batch's vectors."""

    event_id: str
    item_id: str
    action: str
    weight: float | None
    ts: int
    row: int


FORGET = None
"""The op that empties the user's state (the user was deleted)."""


class UserJob(NamedTuple):
    """One user's part of a batch.

    - ``stored``: the state's bytes from the table, when the child may not hold the user (its
      items' vectors are in the batch); None with ``fresh`` for a user with no stored state;
      None without ``fresh`` when the child holds the user.
    - ``ops``: ``Learn`` ops and ``FORGET``, in event order.
    - ``publish``: answer with the state and record even if nothing changed (a redelivery: the
      record may never have gone out).
    """

    user_id: str
    stored: bytes | None
    fresh: bool
    ops: list[Learn | None]
    publish: bool


class Batch(NamedTuple):
    """Jobs of distinct users, the vectors they need (``item_ids[i]`` is row ``i``), and the
    changes to the set of deleted items since the previous batch."""

    jobs: list[UserJob]
    item_ids: list[str]
    vectors: np.ndarray
    deleted: list[str]
    undeleted: list[str]


class UserResult(NamedTuple):
    """What became of a job: ``learned[i]`` for its i-th ``Learn`` (False: a duplicate, an
    expired event, or a rejected one). ``blob`` and ``record`` come when the state changed or
    ``publish`` was asked; ``empty`` (no action left) means: delete the stored state, publish a
    tombstone. ``rejected``: (event id, reason) of events the engine refused (an embedding of
    another dimension than the user's state): dead letters."""

    user_id: str
    learned: list[bool]
    changed: bool
    empty: bool
    blob: bytes | None
    record: bytes | None
    rejected: list[tuple[str, str]]


class EngineHost:
    """The users' states and how a batch applies to them (no I/O: the child process runs one,
    tests run one in process)."""

    def __init__(self, config: InterestConfig, publishing: Publishing, cache_users: int) -> None:
        self.config = config
        self.publishing = publishing
        self.cache_users = cache_users
        self.states: OrderedDict[str, InterestClusters] = OrderedDict()
        self.deleted: set[str] = set()

    def clear(self) -> None:
        self.states.clear()

    def answer(self, batch: Batch) -> list[UserResult] | Exception:
        """``apply``, or the error it raised, with every state forgotten (some may be half
        applied): what the worker is told, from a child process or from ``LocalEngine``."""
        try:
            return self.apply(batch)
        except Exception as exc:
            self.clear()
            return exc

    def apply(self, batch: Batch) -> list[UserResult]:
        self.deleted.difference_update(batch.undeleted)
        self.deleted.update(batch.deleted)
        rows = {item: i for i, item in enumerate(batch.item_ids)}
        vectors = batch.vectors

        def lookup(ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
            found = [i for i in ids if i in rows]
            return found, vectors[[rows[i] for i in found]]

        return [self._apply_job(job, vectors, lookup) for job in batch.jobs]

    def _state(self, job: UserJob, lookup: Any) -> InterestClusters:
        states = self.states
        if job.stored is not None:
            state = InterestClusters.from_bytes(job.stored, lookup, config=self.config)
        elif job.fresh:
            state = InterestClusters(self.config)
        else:
            held = states.get(job.user_id)
            if held is None:
                raise RuntimeError(f"engine process does not hold user {job.user_id!r}")
            states.move_to_end(job.user_id)
            return held
        states[job.user_id] = state
        states.move_to_end(job.user_id)
        while len(states) > self.cache_users:
            states.popitem(last=False)
        return state

    def _apply_job(self, job: UserJob, vectors: np.ndarray, lookup: Any) -> UserResult:
        state = self._state(job, lookup)
        learned: list[bool] = []
        rejected: list[tuple[str, str]] = []
        changed = False
        for op in job.ops:
            if op is FORGET:
                state.forget()
                changed = True
                continue
            try:
                ok = state.learn_one(op, vectors[op.row])
            except ValueError as exc:  # the state is untouched: learn_one checks first
                rejected.append((op.event_id, str(exc)))
                ok = False
            learned.append(ok)
            changed = changed or ok
        # Lazy deletes: items deleted since this user's state last saw them.
        if self.deleted:
            for item_id in sorted(state.seen_among(self.deleted)):
                changed = state.forget_item(item_id) or changed
        if not changed and not job.publish:
            return UserResult(job.user_id, learned, False, False, None, None, rejected)
        if state.n_actions == 0:
            self.states.pop(job.user_id, None)
            return UserResult(job.user_id, learned, changed, True, None, None, rejected)
        blob = state.to_bytes()
        record = interests_record(job.user_id, state, blob, self.publishing)
        return UserResult(job.user_id, learned, changed, False, blob, record, rejected)


class HeldUsers:
    """The worker's mirror of which users an ``EngineHost`` holds: ``touch`` for each job in
    the order sent (True when the host holds the user already), ``drop`` when a job's result
    is empty, the same capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def touch(self, user_id: str) -> tuple[bool, list[str]]:
        """Mark ``user_id`` as sent; returns whether it was held, and the users evicted."""
        users = self._users
        held = user_id in users
        users[user_id] = None
        users.move_to_end(user_id)
        evicted = []
        while len(users) > self.capacity:
            evicted.append(users.popitem(last=False)[0])
        return held, evicted

    def drop(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def clear(self) -> None:
        self._users.clear()


def _serve(
    requests: Connection,
    results: Connection,
    config: InterestConfig,
    publishing: Publishing,
    cache: int,
) -> None:
    """The child's loop: ``("batch", Batch)`` -> list of ``UserResult`` (or the exception),
    ``("clear",)`` -> forget every state, EOF or ``("stop",)`` -> exit."""
    host = EngineHost(config, publishing, cache)
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            return  # the worker is gone (even SIGKILLed: its end of the pipe closed)
        if message[0] == "stop":
            return
        if message[0] == "clear":
            host.clear()
            continue
        reply = host.answer(message[1])  # an error is sent back: the worker raises it
        try:
            results.send(reply)
        except (BrokenPipeError, OSError):
            return


class EngineProcessError(RuntimeError):
    """The engine process failed or is gone."""


# Pipes this big (Linux's default limit for a process that is not privileged) take a chunk's
# results in a few reads: each read has to win the GIL back from the busy event loop.
PIPE_BYTES = 1 << 20


def _widen(conn: Connection) -> None:
    """Grow the pipe under ``conn`` to ``PIPE_BYTES`` where the OS allows (Linux)."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)


class EngineProcess:
    """An ``EngineHost`` in a child process. ``apply`` returns a future (the event loop runs
    on meanwhile); requests are served in order. A request goes out while the previous ones
    are worked on (a sender thread) and answers are read as they come (a receiver thread),
    so the child works on the next chunk while this process takes the last one's results."""

    def __init__(self, config: InterestConfig, publishing: Publishing, cache_users: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        child_requests, self._requests = ctx.Pipe(duplex=False)
        self._results, child_results = ctx.Pipe(duplex=False)
        _widen(self._requests)
        _widen(self._results)
        self._process = ctx.Process(
            target=_serve,
            # (a mappingproxy does not pickle)
            args=(
                child_requests,
                child_results,
                config.with_(action_weights=dict(config.action_weights)),
                publishing,
                cache_users,
            ),
            name="recstream-engine",
            daemon=True,
        )
        self._process.start()
        child_requests.close()
        child_results.close()
        self._lock = threading.Lock()
        self._pending: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = deque()
        self._failure: EngineProcessError | None = None
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="recstream-engine-send")
        self._receiver = threading.Thread(
            target=self._receive, name="recstream-engine-receive", daemon=True
        )
        self._receiver.start()

    def apply(self, batch: Batch) -> asyncio.Future[list[UserResult]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[UserResult]] = loop.create_future()
        with self._lock:
            if self._failure is not None:
                future.set_exception(self._failure)
                return future
            self._pending.append((loop, future))
        self._sender.submit(self._send, ("batch", batch))
        return future

    async def clear(self) -> None:
        """Forget every state (after the requests already sent)."""
        await asyncio.get_running_loop().run_in_executor(self._sender, self._send, ("clear",))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._requests.send(message)
        except (OSError, ValueError) as exc:  # ValueError: closed here
            self._fail(exc)

    def _receive(self) -> None:
        while True:
            try:
                reply = self._results.recv()
            except (EOFError, OSError) as exc:
                self._fail(exc)
                return
            with self._lock:
                loop, future = self._pending.popleft()
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_settle, future, reply)

    def _fail(self, cause: BaseException) -> None:
        error = EngineProcessError(
            f"the engine process is gone (exit code {self._process.exitcode}): {cause!r}"
        )
        with self._lock:
            if self._failure is None:
                self._failure = error
            pending, self._pending = list(self._pending), deque()
        for loop, future in pending:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_settle, future, error)

    def stop(self, timeout: float = 5.0) -> None:
        self._sender.shutdown(wait=True)
        with contextlib.suppress(OSError, ValueError):  # already gone
            self._requests.send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._requests.close()
        self._receiver.join(timeout)
        self._results.close()


class LocalEngine:
    """An ``EngineHost`` in this process, behind ``EngineProcess``'s interface: the engine
    shares the worker's core (``--engine local``: no second process, nothing to pipe)."""

    def __init__(self, config: InterestConfig, publishing: Publishing, cache_users: int) -> None:
        self._host = EngineHost(config, publishing, cache_users)

    def apply(self, batch: Batch) -> asyncio.Future[list[UserResult]]:
        future: asyncio.Future[list[UserResult]] = asyncio.get_running_loop().create_future()
        _settle(future, self._host.answer(batch))
        return future

    async def clear(self) -> None:
        self._host.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._host.clear()


# By InterestsWorkerConfig.engine_in.
ENGINES: dict[str, type[EngineProcess] | type[LocalEngine]] = dict(
    zip(ENGINE_PLACES, (EngineProcess, LocalEngine), strict=True)
)
"""Where the engine runs: ``process`` (a child process, the default) or ``local``."""


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, EngineProcessError):
        future.set_exception(reply)
    elif isinstance(reply, BaseException):
        error = EngineProcessError(f"the engine process failed: {reply!r}")
        error.__cause__ = reply
        future.set_exception(error)
    else:
        future.set_result(reply)

"""The interests engine in a process of its own, beside the worker's event loop.

The interests worker spends about half its time in faust's consume path (fetch, events, acks,
table writes, records out) and half in the engine (learn, medoids, state bytes): pure Python
and small numpy calls, one core at most under the GIL. ``EngineHost`` holds the users' states
and applies a batch of user jobs; ``EngineProcess`` runs one in a child process, so the engine
works on one core while the event loop consumes the next events on another.

The worker decides everything that needs its tables and the item store (redeliveries, parking,
which vectors an event gets) and sends each user's job: the events to learn, in order, and
the stored state when the child may not hold that user. The child answers with what changed,
the state's bytes for the table and the ``user-interests`` record. Both sides keep the same
least-recently-used set of users (the worker mirrors which users the child holds: the same
operations in the same order), so a state crosses the pipe only when the child lacks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from streams.interests import InterestClusters, InterestConfig
from streams.schemas import user_interests_json

PUBLISHED_STATES = ("view", "full", "none")


@dataclass(frozen=True)
class Publishing:
    """What a ``user-interests`` record holds: the top ``interests`` (each with its
    ``members`` most recent items) and the state ("view", "full" or "none")."""

    interests: int = 10
    members: int = 5
    state: str = "view"

    def __post_init__(self) -> None:
        if self.state not in PUBLISHED_STATES:
            raise ValueError(f"published state must be view, full or none: {self.state!r}")


def interests_record(
    user_id: str, state: InterestClusters, blob: bytes, publishing: Publishing
) -> bytes:
    """The user's ``user-interests`` record (``UserInterests`` JSON); ``blob`` is the state's
    ``to_bytes``."""
    now = state.last_ts
    if publishing.state == "view":
        published: bytes | None = state.to_bytes(view=True)
    else:
        published = blob if publishing.state == "full" else None
    return user_interests_json(
        user_id=user_id,
        interests=state.summaries(publishing.interests, now, members=publishing.members),
        n_actions=state.n_actions,
        last_event_id=state.last_event_id,
        last_event_ts=now,
        updated_ms=int(time.time() * 1000),
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
    """What became of a job: ``learned[i]`` for its i-th ``Learn`` (False: a duplicate or an
    expired event). ``blob`` and ``record`` come when the state changed or ``publish`` was
    asked; ``empty`` (no action left) means: delete the stored state, publish a tombstone."""

    user_id: str
    learned: list[bool]
    changed: bool
    empty: bool
    blob: bytes | None
    record: bytes | None


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
        changed = False
        for op in job.ops:
            if op is FORGET:
                state.forget()
                changed = True
            else:
                ok = state.learn_one(op, vectors[op.row])
                learned.append(ok)
                changed = changed or ok
        # Lazy deletes: items deleted since this user's state last saw them.
        if self.deleted:
            for item_id in [i for i in state.seen_items if i in self.deleted]:
                changed = state.forget_item(item_id) or changed
        if not changed and not job.publish:
            return UserResult(job.user_id, learned, False, False, None, None)
        if state.n_actions == 0:
            self.states.pop(job.user_id, None)
            return UserResult(job.user_id, learned, changed, True, None, None)
        blob = state.to_bytes()
        record = interests_record(job.user_id, state, blob, self.publishing)
        return UserResult(job.user_id, learned, changed, False, blob, record)


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


def _serve(conn: Connection, config: InterestConfig, publishing: Publishing, cache: int) -> None:
    """The child's loop: ``("batch", Batch)`` -> list of ``UserResult`` (or the exception),
    ``("clear",)`` -> forget every state, EOF or ``("stop",)`` -> exit."""
    host = EngineHost(config, publishing, cache)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone (even SIGKILLed: its end of the pipe closed)
        if message[0] == "stop":
            return
        if message[0] == "clear":
            host.clear()
            continue
        try:
            reply: Any = host.apply(message[1])
        except Exception as exc:  # sent back: the worker raises it
            host.clear()
            reply = exc
        conn.send(reply)


class EngineProcessError(RuntimeError):
    """The engine process failed or is gone."""


class EngineProcess:
    """An ``EngineHost`` in a child process. ``apply`` returns an awaitable (the event loop
    runs on meanwhile); calls are served in order, one at a time."""

    def __init__(self, config: InterestConfig, publishing: Publishing, cache_users: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            # (a mappingproxy does not pickle)
            args=(
                child,
                config.with_(action_weights=dict(config.action_weights)),
                publishing,
                cache_users,
            ),
            name="recstream-engine",
            daemon=True,
        )
        self._process.start()
        child.close()
        # One thread: requests go out and answers come back in order.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="recstream-engine-io")

    def _call(self, batch: Batch) -> list[UserResult]:
        try:
            self._conn.send(("batch", batch))
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode
            raise EngineProcessError(f"the engine process is gone (exit code {code})") from exc
        if isinstance(reply, BaseException):
            raise EngineProcessError(f"the engine process failed: {reply!r}") from reply
        return reply

    def apply(self, batch: Batch) -> asyncio.Future[list[UserResult]]:
        return asyncio.get_running_loop().run_in_executor(self._io, self._call, batch)

    async def clear(self) -> None:
        """Forget every state (after the requests already sent)."""
        await asyncio.get_running_loop().run_in_executor(self._io, self._conn.send, ("clear",))

    def stop(self, timeout: float = 5.0) -> None:
        self._io.shutdown(wait=True)
        with contextlib.suppress(OSError, ValueError):  # already gone
            self._conn.send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

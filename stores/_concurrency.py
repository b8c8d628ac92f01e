"""How query threads and the one writer thread share index state.

Two schemes, both for a writer that is already serialized by its owner's
writer mutex:

`TwoCopies` (left-right): readers use the published copy; the writer applies a
change to the other copy, publishes it, waits for the readers still inside the
old copy to leave (queries in flight, sub-millisecond) and brings the old copy
up to date by replaying the change (a bulk load is cloned instead). Readers
never wait for a write; the cost is twice the memory and the write CPU.

`OneCopy`: one copy under a phase-fair reader/writer lock. The writer applies a
change in slices of about `write_budget_ms` each, so a query waits at most one
slice; half the memory of `TwoCopies`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

log = logging.getLogger(__name__)


class Cloneable(Protocol):
    def clone(self) -> Self: ...

    def size(self) -> int:
        """How big the state is, in the unit writes count rows in (e.g. index slots)."""
        ...


S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)
G = TypeVar("G", bound=Cloneable)
# op(state, rows): apply rows[rows] of a change to one copy of the state.
Op = Callable[[S, slice], None]


class Copies(Protocol[S_co]):
    """What an index needs from a sharing scheme (`OneCopy` or `TwoCopies`)."""

    @property
    def copies(self) -> int: ...

    def reading(self) -> AbstractContextManager[S_co]: ...

    def latest(self) -> S_co: ...

    def private(self) -> AbstractContextManager[S_co]: ...

    def write(self, op: Callable[[S_co, slice], None], rows: int, kind: str) -> None: ...


class _Costs:
    """Moving averages of seconds per row, one per kind of write (upserts cost ~1000x deletes)."""

    def __init__(self, first_guess: float) -> None:
        self._first_guess = first_guess
        self._avg: dict[str, float] = {}

    def __getitem__(self, kind: str) -> float:
        return self._avg.get(kind, self._first_guess)

    def observe(self, kind: str, seconds: float, rows: int) -> None:
        if rows > 0:
            self._avg[kind] = 0.7 * self[kind] + 0.3 * seconds / rows


class ReadWriteLock:
    """Phase-fair reader/writer lock.

    Readers share it, a writer holds it alone. A waiting writer holds back newly
    arriving readers, and a writer that finishes lets in every reader that queued
    during its turn before the next writer goes, so neither side starves even
    when the writer comes straight back. Not re-entrant.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # hot paths take it directly (cheaper than the condition)
        self._cond = threading.Condition(self._mutex)
        self._readers = 0  # holding the lock
        self._writing = False
        self._waiting_writers = 0
        self._queued_readers = 0
        self._entitled = 0  # queued readers let in by the last write release, not yet inside
        self._turn = 0  # bumped by every write release

    def acquire_read(self) -> None:
        with self._mutex:
            if not self._writing and not self._waiting_writers:
                self._readers += 1
                return
            turn = self._turn
            self._queued_readers += 1
            while self._writing or (self._waiting_writers and self._turn == turn):
                self._cond.wait()
            self._queued_readers -= 1
            if self._turn != turn:
                self._entitled -= 1
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._waiting_writers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._mutex:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers or self._entitled:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writing = True

    def release_write(self) -> None:
        with self._mutex:
            self._writing = False
            self._turn += 1
            self._entitled = self._queued_readers
            self._cond.notify_all()


class _Holding(Generic[S]):
    """Context manager: acquire, hand out `state`, release."""

    __slots__ = ("_acquire", "_release", "_state")

    def __init__(self, acquire: Callable[[], None], release: Callable[[], None], state: S) -> None:
        self._acquire, self._release, self._state = acquire, release, state

    def __enter__(self) -> S:
        self._acquire()
        return self._state

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()


class OneCopy(Generic[S]):
    """One copy of the state under a `ReadWriteLock`; writes cut into short slices."""

    copies = 1

    def __init__(self, state: S, write_budget_ms: float | None = 5.0) -> None:
        self._state = state
        self._lock = ReadWriteLock()
        self.write_budget_ms = write_budget_ms
        self._costs = _Costs(first_guess=1e-3)

    def reading(self) -> _Holding[S]:
        """``with copies.reading() as state:`` a consistent state for queries."""
        return _Holding(self._lock.acquire_read, self._lock.release_read, self._state)

    def latest(self) -> S:
        """The current state, for the writer-mutex holder (may be read, not changed)."""
        return self._state

    def private(self) -> _Holding[S]:
        """The state with no reader inside (exclusive), for the writer-mutex holder."""
        return _Holding(self._lock.acquire_write, self._lock.release_write, self._state)

    def write(self, op: Op[S], rows: int, kind: str) -> None:
        """Apply `op` to rows [0, rows) in exclusive slices of ~`write_budget_ms` each,
        sized from the measured cost per row of this `kind` of write."""
        start = 0
        while True:
            if self.write_budget_ms is None:
                end = rows
            else:
                per_slice = int(self.write_budget_ms / 1e3 / self._costs[kind])
                end = min(rows, start + max(1, per_slice))
            began = time.perf_counter()
            with self.private() as state:
                op(state, slice(start, end))
            self._costs.observe(kind, time.perf_counter() - began, end - start)
            start = end
            if start >= rows:
                return


class TwoCopies(Generic[G]):
    """Left-right: readers use the published copy while the writer changes the other."""

    copies = 2

    def __init__(self, state: G) -> None:
        self._states = [state, state.clone()]
        self._active = 0
        self._inside = [0, 0]  # readers inside each copy
        self._mutex = threading.Lock()
        self._left = threading.Condition(self._mutex)  # a copy's last reader left
        self._draining = False

    def reading(self) -> _Reader[G]:
        """``with copies.reading() as state:`` the published copy; never waits for a write."""
        return _Reader(self)

    def latest(self) -> G:
        return self._states[self._active]

    def private(self) -> _Holding[G]:
        """The unpublished copy, which no reader uses between writes."""
        standby = self._states[1 - self._active]
        return _Holding(_nothing, _nothing, standby)

    def write(self, op: Op[G], rows: int, kind: str) -> None:
        """Apply `op` to the standby copy, publish it, wait for the readers of the other
        copy to leave, then catch that one up.

        Catching up replays `op`, except for bulk writes (at least half the index's
        slots), where cloning the published copy is far cheaper. A clone holds the GIL
        (~2 ms per 1,000 slots of 384-d), a replay releases it inside hnswlib.
        """
        new = 1 - self._active
        try:
            op(self._states[new], slice(0, rows))
        except BaseException:  # the standby may be half-changed: make it the published one again
            self._states[new] = self._states[self._active].clone()
            raise
        with self._mutex:
            old, self._active = self._active, new
            self._draining = True
            while self._inside[old]:
                self._left.wait()
            self._draining = False
        published = self._states[new]
        if 2 * rows < published.size():
            try:
                op(self._states[old], slice(0, rows))
                return
            except Exception:  # only if the copies diverged: clone instead
                log.warning(
                    "replaying a %s on the second copy failed; cloning", kind, exc_info=True
                )
        self._states[old] = published.clone()


class _Reader(Generic[G]):
    """`TwoCopies.reading()`: enter the published copy, leave it after (counted)."""

    __slots__ = ("_owner", "_slot")

    def __init__(self, owner: TwoCopies[G]) -> None:
        self._owner = owner
        self._slot = 0

    def __enter__(self) -> G:
        owner = self._owner
        with owner._mutex:
            self._slot = owner._active
            owner._inside[self._slot] += 1
        return owner._states[self._slot]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owner = self._owner
        with owner._mutex:
            owner._inside[self._slot] -= 1
            if owner._draining and owner._inside[self._slot] == 0:
                owner._left.notify_all()


def _nothing() -> None:
    return None

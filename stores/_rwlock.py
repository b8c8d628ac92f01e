"""A writer-preferring reader/writer lock.

Many readers hold the lock together; a writer holds it alone. Once a writer is
waiting, new readers queue behind it, so a steady stream of queries cannot
starve the Kafka consumer. Callers keep exclusive sections short (see
``ItemIndex.write_budget_ms``) because queued readers wait for them.

Not re-entrant: a thread holding the read side must not take it again (a
writer queued in between would deadlock both).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class ReadWriteLock:
    """Shared (``read``) / exclusive (``write``) lock; use as context managers."""

    __slots__ = ("_cond", "_readers", "_waiting_writers", "_writing", "read", "write")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._waiting_writers = 0
        self._writing = False
        self.read = _Side(self.acquire_read, self.release_read)
        self.write = _Side(self.acquire_write, self.release_write)

    def acquire_read(self) -> None:
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writing = True

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()


class _Side:
    """One side of the lock as a cheap, reusable context manager."""

    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire: Callable[[], None], release: Callable[[], None]) -> None:
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

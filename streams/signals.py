"""Stop signals as a ``threading.Event``, for roles that run in the foreground.

SIGINT (Ctrl-C), SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) all mean
"stop". The handler only sets the event; the role's loop checks it and stops what it owns in
order (``recstream demo``: the API, the workers, then the broker; ``recstream broker``: tansu).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by a stop signal while the block runs; the old handlers come back after.

    Call it from the main thread (only that thread may install signal handlers).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

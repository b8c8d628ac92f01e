"""uvloop as the event loop of faust apps.

faust runs on asyncio's own event loop unless told otherwise; its per-event work is mostly
asyncio machinery (futures, callbacks, transports), which uvloop does in C.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

EVENT_LOOPS = ("uvloop", "asyncio")


def use_event_loop(name: str) -> str:
    """Make ``name`` ("uvloop" or "asyncio") the event loop of faust apps started from now on
    in this process; returns the one in use (asyncio when uvloop is not installed).

    faust's per-event work is mostly asyncio machinery (futures, callbacks, transports):
    uvloop, which faust and mode support, does it in C.
    """
    if name not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {name!r}: expected uvloop or asyncio")
    if name == "uvloop":
        try:
            import mode.loop

            mode.loop.use("uvloop")
            return "uvloop"
        except ImportError:
            log.warning("uvloop is not installed: running on asyncio's own event loop")
    return "asyncio"

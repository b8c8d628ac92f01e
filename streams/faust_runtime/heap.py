"""The garbage collector of a faust worker whose heap is large and long-lived.

CPython's full (generation 2) collections walk every tracked container. The interests worker
holds thousands of user states (lists, sets, deques of item and event ids) plus faust's
per-event objects: a full collection took 100-200 ms there every few seconds, found almost
nothing to free, and stalled every event in flight (freshness p99). ``FreezeSurvivors`` moves
what survives a full collection to the permanent generation (``gc.freeze``), so the next ones
walk only what is new; reference counting still frees frozen objects as usual. Cycles among
frozen objects would never be found, so every ``full_every_s`` seconds the collector gets the
whole heap back once (``gc.unfreeze``) and its next full collection sees everything.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


class FreezeSurvivors:
    """A ``gc`` callback: freeze the survivors of each full collection; every ``full_every_s``
    seconds, unfreeze instead so that the next full collection walks the whole heap."""

    def __init__(
        self, full_every_s: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if full_every_s <= 0:
            raise ValueError(f"full_every_s must be > 0: {full_every_s}")
        self.full_every_s = full_every_s
        self._clock = clock
        self._last_whole = clock()

    def install(self) -> None:
        """Collect once and freeze what is left (imports, configuration), then keep freezing."""
        gc.collect()
        gc.freeze()
        self._last_whole = self._clock()
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        gc.unfreeze()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self._clock()
        if now - self._last_whole >= self.full_every_s:
            self._last_whole = now
            gc.unfreeze()
        else:
            gc.freeze()

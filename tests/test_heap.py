"""FreezeSurvivors: full collections walk only what is new, yet cycles are still found."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.faust_runtime.heap import FreezeSurvivors


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle nothing else holds (only a collection can free it)."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    gc.unfreeze()


def test_survivors_of_a_full_collection_are_frozen_and_new_cycles_still_collected(
    clock: Clock,
) -> None:
    heap = FreezeSurvivors(full_every_s=600, clock=clock)
    heap.install()
    try:
        assert gc.get_freeze_count() > 0  # imports and the like: frozen at install
        kept = [Node() for _ in range(1000)]
        before = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() >= before + len(kept)  # survived: now frozen
        garbage = cycle()
        gc.collect()
        assert garbage() is None  # made after the freeze: collected as usual
    finally:
        heap.uninstall()
    assert gc.get_freeze_count() == 0
    assert heap not in gc.callbacks


def test_every_full_every_s_the_whole_heap_is_collected_once_more(clock: Clock) -> None:
    heap = FreezeSurvivors(full_every_s=600, clock=clock)
    holder = [Node()]
    holder[0].other = Node()
    held = weakref.ref(holder[0])
    heap.install()  # the pair is alive: frozen
    try:
        holder[0].other.other = holder[0]  # type: ignore[union-attr]  # now a cycle ...
        holder.clear()  # ... that nothing holds, among frozen objects
        gc.collect()
        assert held() is not None  # frozen objects are not walked
        clock.now = 601
        gc.collect()  # at its end the heap is unfrozen
        gc.collect()  # so this one walks everything
        assert held() is None
    finally:
        heap.uninstall()


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="full_every_s"):
        FreezeSurvivors(full_every_s=0)

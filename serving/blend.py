"""Blending per-interest candidate lists into one recommendation list (pure, no I/O).

PinnerSage queries the index once per sampled medoid and gives each interest a share of the
slots proportional to its importance, so a user's dominant interest leads while the smaller
ones still show up. Shares are rounded by largest remainder so they always sum to ``k``; slots an
interest cannot fill (too few fresh candidates) go to the others in importance order.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One recommended item: its similarity score and the interest (list index) it came from."""

    item_id: str
    score: float
    interest: int


def quotas(importances: Sequence[float], k: int) -> list[int]:
    """Split ``k`` slots among interests proportionally to importance (largest remainder).

    >>> quotas([3.0, 1.0], 4)
    [3, 1]
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(importances)
    if n == 0:
        return []
    # Plain Python: a query has ~3 interests, where numpy's per-call overhead dominates.
    w = [max(float(x), 0.0) for x in importances]
    total = math.fsum(w)
    if not math.isfinite(total) or total <= 0.0:
        w = [1.0] * n
        total = float(n)
    exact = [x / total * k for x in w]
    base = [math.floor(x) for x in exact]
    rest = k - sum(base)
    # Ties go to the earlier (more important) interest: a stable sort on the remainder.
    for i in sorted(range(n), key=lambda i: base[i] - exact[i])[:rest]:
        base[i] += 1
    return base


def blend(
    results: Sequence[Sequence[tuple[str, float]]],
    importances: Sequence[float],
    k: int,
    exclude: Container[str] = frozenset(),
) -> list[Candidate]:
    """Merge per-interest ``(item_id, score)`` lists (best first) into at most ``k`` candidates.

    Each interest first takes its quota of unseen, not-yet-taken items; leftover slots are then
    filled round-robin by importance. An item found by several interests is credited to the
    first interest that takes it. The result is ordered by score, best first, whatever interest
    each item came from.
    """
    if len(results) != len(importances):
        raise ValueError(f"{len(results)} result lists for {len(importances)} importances")
    if k <= 0 or not results:
        return []
    order = sorted(range(len(results)), key=lambda i: -float(importances[i]))
    share = quotas(importances, k)
    taken: dict[str, Candidate] = {}
    cursors = [0] * len(results)

    def take_from(i: int, limit: int) -> int:
        got = 0
        lst = results[i]
        while got < limit and cursors[i] < len(lst):
            item_id, score = lst[cursors[i]]
            cursors[i] += 1
            if item_id in taken or item_id in exclude:
                continue
            taken[item_id] = Candidate(item_id, float(score), i)
            got += 1
        return got

    for i in order:
        take_from(i, share[i])
    # Spill-over: interests with candidates left fill the slots the others could not.
    while len(taken) < k:
        progressed = False
        for i in order:
            if len(taken) >= k:
                break
            if take_from(i, 1):
                progressed = True
        if not progressed:
            break
    return sorted(taken.values(), key=lambda c: (-c.score, c.interest, c.item_id))

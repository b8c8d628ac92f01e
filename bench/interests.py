"""Interests engine throughput: per-event updates/s, state size and full-recluster time.

Baseline, measured in the same run: the batch approach the engine replaces (a full Ward
recluster of the user's actions for every event), at 500 actions.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, parse_args, progress
from streams.interests import DAY_MS, InterestClusters, InterestConfig
from streams.schemas import Engagement

DIM = 384
T0 = 1_700_000_000_000


def user_stream(n: int, topics: int, seed: int) -> tuple[list[Engagement], list[np.ndarray]]:
    """One user's engagements over ``topics`` latent interests, items drawn with repeats."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    catalogue = 4 * n
    item_topic = rng.integers(0, topics, size=catalogue)
    noise = rng.normal(size=(catalogue, DIM)) * (0.6 / np.sqrt(DIM))
    items = centers[item_topic] + noise
    items = (items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32)
    picks = rng.integers(0, catalogue, size=n)  # mostly distinct items: the costly case
    actions = rng.choice(["view", "click", "save"], size=n, p=[0.7, 0.25, 0.05])
    events = [
        Engagement(
            event_id=f"e{k}",
            user_id="u",
            item_id=f"i{picks[k]}",
            action=str(actions[k]),
            ts=T0 + k * 60_000,
        )
        for k in range(n)
    ]
    return events, [items[p] for p in picks]


def updates_per_s(sizes: tuple[int, ...], measured: int, repeats: int) -> dict[int, float]:
    """Median updates/s per size; repeats interleave the sizes, so a slow spell of a shared
    machine hits them alike instead of one size's whole run."""
    setups = {}
    for actions in sizes:
        config = InterestConfig(max_actions=actions, window_days=3650)
        events, vectors = user_stream(actions + measured, topics=8, seed=actions)
        setups[actions] = (config, events, vectors)
    rates: dict[int, list[float]] = {a: [] for a in sizes}
    for _ in range(repeats):
        for actions, (config, events, vectors) in setups.items():
            state = InterestClusters(config)
            for e, v in zip(events[:actions], vectors[:actions], strict=True):
                state.learn_one(e, v)  # fill to the cap: the steady state evicts one per event
            t = time.perf_counter()
            for e, v in zip(events[actions:], vectors[actions:], strict=True):
                state.learn_one(e, v)
            rates[actions].append(measured / (time.perf_counter() - t))
    return {a: float(np.median(r)) for a, r in rates.items()}


def filled_state(actions: int, events: int) -> InterestClusters:
    config = InterestConfig(max_actions=actions, window_days=3650)
    stream, vectors = user_stream(events, topics=8, seed=actions)
    state = InterestClusters(config)
    for e, v in zip(stream, vectors, strict=True):
        state.learn_one(e, v)
    return state


def main() -> None:
    args = parse_args(__doc__)
    # Each measured run spans more than one full recluster period (500 events).
    measured = 2_000 if args.quick else 5_000
    repeats = 3 if args.quick else 15
    progress(f"updates/s at 50 and 500 actions ({repeats} interleaved repeats)")
    ups = updates_per_s((50, 500), measured, repeats)
    ups_50, ups_500 = ups[50], ups[500]
    state = filled_state(500, 500 + measured)
    blob = state.to_bytes()
    progress("full recluster at 500 actions")
    times = []
    for _ in range(10 if args.quick else 30):
        t = time.perf_counter()
        state.recluster()
        times.append(time.perf_counter() - t)
    recluster_ms = float(np.median(times) * 1000)
    top = state.top_medoids(3, state.last_ts + DAY_MS)
    emit(
        {
            "bench": "interests",
            "quick": args.quick,
            "dim": DIM,
            "updates_per_s_50": round(ups_50),
            "updates_per_s_500": round(ups_500),
            "state_bytes_500": len(blob),
            "recluster_ms_500": round(recluster_ms, 2),
            "baseline_recluster_per_event_ups_500": round(1000.0 / recluster_ms),
            "ratio_incremental_vs_recluster_500": round(ups_500 * recluster_ms / 1000.0, 1),
            "clusters_500": state.n_clusters,
            "distinct_items_500": len(state.seen_items),
            "top_importances": [round(i.importance, 2) for i in top],
            "recluster_every": InterestConfig().recluster_every,
        }
    )


if __name__ == "__main__":
    main()

"""Where a serving replica keeps its state and how it indexes (``ReadModelConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serving.recommend import RecommendConfig


@dataclass(frozen=True)
class ReadModelConfig:
    """Where a replica keeps its state and how it indexes (documented defaults).

    - ``data_dir``: ``state/`` (RocksDB), ``index/`` and ``popularity/`` snapshots.
    - ``snapshot_every_s``: seconds between snapshots (300; 0 = only on close).
    - ``index_M`` / ``index_ef_construction`` / ``index_ef``: HNSW parameters (16 / 100 / 32;
      ``ef`` matches the recommender's search depth, see ``RecommendConfig``).
    - ``index_copies``: 2 = queries never wait for writes (see ``stores.ItemIndex``).
    - ``popularity_half_life_hours``: decay of cold-start popularity (24).
    - ``user_cache_size``: decoded user profiles kept in memory (100,000).
    - ``recent_users``: recently updated users listed for the dashboard (500).
    - ``freeze_gc_when_ready``: once caught up, move everything alive to the garbage
      collector's permanent generation (``gc.freeze``; False). The catalog, index maps and
      profiles are millions of long-lived objects that each full collection would otherwise
      walk, a pause of ~0.1 s under load; ``recstream serve`` sets it.
    """

    data_dir: Path = Path("data/serving")
    snapshot_every_s: float = 300.0
    snapshot_keep: int = 2
    index_M: int = 16
    index_ef_construction: int = 100
    index_ef: int = 32
    index_copies: int = 2
    popularity_half_life_hours: float = 24.0
    user_cache_size: int = 100_000
    recent_users: int = 500
    freeze_gc_when_ready: bool = False
    poll_timeout_ms: int = 50
    max_poll_records: int = 5000
    recommend: RecommendConfig = field(default_factory=RecommendConfig)

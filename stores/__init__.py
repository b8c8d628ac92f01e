"""recstream stores: the HNSW item index (with snapshots) and RocksDB state.

Imports neither `streams`, `serving` nor `encoders`.
"""

from stores.index import ExactIndex, ItemIndex, Neighbor, normalize_rows
from stores.kv import (
    Batch,
    CachedItemVectors,
    ItemStore,
    OffsetStore,
    StateDB,
    StoredItem,
    StoreLockedError,
    UserStore,
)
from stores.snapshot import SnapshotError

__all__ = [
    "Batch",
    "CachedItemVectors",
    "ExactIndex",
    "ItemIndex",
    "ItemStore",
    "Neighbor",
    "OffsetStore",
    "SnapshotError",
    "StateDB",
    "StoreLockedError",
    "StoredItem",
    "UserStore",
    "normalize_rows",
]

"""Snapshots of a replica's read models, and the restore that starts from them.

A snapshot holds the index (with the ``item-embeddings`` offsets it reflects) and the
popularity model (with the ``engagements`` offsets), and flushes RocksDB (the item and user
stores, whose offsets commit with their writes). A restart restores the newest intact
snapshots, rebuilds the catalog from the item store, and replays only the tail of each topic
(replaying a compacted record twice is harmless: the last one wins).

Deletes leave nothing behind: the index file carries no deleted vector, popularity no item
deleted since the last snapshot (items engaged with before their embedding came stay). The
snapshot after an item's delete keeps no older generation (they hold the item) and purges the
item store; the snapshot after a user's or an item's delete, and the one after it (which sees
the records the interests worker republishes without a deleted item), purge the user stores
(`StateDB.purge`: their deleted and superseded records leave the files). That a purge is owed
is kept in the store (``StateDB.mark_purge_due``): a replica stopped or killed before it purges
both stores at its first snapshot after the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from serving.popularity import DecayedPopularity
from serving.readmodels.config import ReadModelConfig
from serving.readmodels.engagements import EngagementCounter
from serving.readmodels.items import ItemMaterializer
from stores import ItemIndex, StateDB
from stores.snapshot import iter_snapshots, write_snapshot
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS

log = logging.getLogger(__name__)

_POPULARITY_FILE = "popularity.npz"


class Snapshots:
    """Snapshots ``items``' index and ``engagements``' popularity under ``config.data_dir``."""

    def __init__(
        self,
        config: ReadModelConfig,
        db: StateDB,
        items: ItemMaterializer,
        engagements: EngagementCounter,
    ) -> None:
        self.config = config
        self.db = db
        self.items = items
        self.engagements = engagements
        # Snapshots still to purge the item store / the user stores (see the module docstring).
        self._purge_items = 0
        self._purge_users = 0

    def forgot(self, *, items: bool = False, users: bool = False) -> None:
        """Items (``items``) or users (``users``) were deleted since the last snapshot."""
        if not (self._purge_items or self._purge_users):
            self.db.mark_purge_due()
        if items:
            self._purge_items = 1
        if items or users:
            self._purge_users = 2

    def restore(self) -> dict[str, int]:
        """Local state back from RocksDB and the newest intact snapshots; the offsets
        (``"topic:partition"``) to resume consuming from."""
        cfg = self.config
        if self.db.purge_due:  # owed by the last run: its deletes may be on disk still
            self._purge_items = self._purge_users = 1
        offsets = {
            k: v
            for k, v in self.db.offsets.load().items()
            if not k.startswith(ITEM_EMBEDDINGS.name + ":")
        }
        db_item_offsets = {
            k: v
            for k, v in self.db.offsets.load().items()
            if k.startswith(ITEM_EMBEDDINGS.name + ":")
        }
        # Popularity first: installing the index builds the recommender, which keeps the
        # popularity object it is given.
        for path, manifest in iter_snapshots(cfg.data_dir / "popularity"):
            try:
                self.engagements.popularity = DecayedPopularity.from_bytes(
                    (path / _POPULARITY_FILE).read_bytes()
                )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring popularity snapshot %s: %s", path, exc)
                continue
            offsets.update({k: int(v) for k, v in manifest["offsets"].items()})
            break
        else:
            offsets = {k: v for k, v in offsets.items() if not k.startswith(ENGAGEMENTS.name + ":")}
        restored = ItemIndex.restore(cfg.data_dir / "index", copies=cfg.index_copies)
        if restored is not None:
            index, index_offsets = restored
            self.items.install(index)
            # Replay item-embeddings from where the index was: the store may be ahead, and
            # re-applying the tail in order leaves both with the latest record per item.
            offsets.update(index_offsets)
        elif self.db.items.dim is not None:
            index = self.items.new_index(self.db.items.dim)
            for ids, vectors in self.db.items.iterate_vectors(chunk=8192):
                index.upsert(ids, vectors)
            self.items.install(index)
            offsets.update(db_item_offsets)
        self.items.load_catalog()
        if self.items.catalog:
            log.info("restored %d items; replaying the tail", len(self.items.catalog))
        return offsets

    def take(self, positions: Mapping[str, int]) -> None:
        """Snapshot the index and popularity with the offsets they reflect (of ``positions``,
        the ``"topic:partition"`` positions applied); flush RocksDB."""
        cfg = self.config
        offsets = dict(positions)
        purge_items, purge_users = self._purge_items > 0, self._purge_users > 0
        # Older generations hold deleted items: none is kept past an item's delete.
        keep = 1 if purge_items else cfg.snapshot_keep
        index = self.items.index
        if index is not None:
            item_offsets = {
                k: v for k, v in offsets.items() if k.startswith(ITEM_EMBEDDINGS.name + ":")
            }
            index.snapshot(cfg.data_dir / "index", item_offsets, keep=keep)
        pop_offsets = {k: v for k, v in offsets.items() if k.startswith(ENGAGEMENTS.name + ":")}
        # Without the items deleted since the last snapshot (engagements replayed after a delete
        # count the item again) unless they are back; an item engaged with before its embedding
        # arrives keeps its count.
        popularity = self.engagements.popularity
        dropped = set(popularity.forgotten)
        catalog = self.items.catalog
        blob = popularity.to_bytes(
            keep=(lambda i: i not in dropped or i in catalog) if dropped else None
        )

        def write_files(tmp: Path) -> None:
            (tmp / _POPULARITY_FILE).write_bytes(blob)

        write_snapshot(
            cfg.data_dir / "popularity",
            write_files,
            {"format": "recstream.popularity", "offsets": pop_offsets},
            keep=keep,
        )
        popularity.forgotten.difference_update(dropped)
        self.db.flush()
        if purge_items or purge_users:
            self.db.purge(items=purge_items, users=purge_users)
            self._purge_items -= purge_items
            self._purge_users -= purge_users
            if not (self._purge_items or self._purge_users):
                self.db.mark_purge_due(False)

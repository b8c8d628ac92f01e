"""``item-embeddings`` -> the item store (RocksDB, vectors + metadata), the HNSW index
(``ItemIndex``) and the in-memory catalog (title, category); a tombstone deletes the item
everywhere.

The records are written to the item store by the shared materializer
(``streams.item_embeddings``), normalized and with the catalog's metadata; here the index and
the catalog follow what it wrote, and a record it rejects is dead-lettered."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from serving.readmodels.config import ReadModelConfig
from serving.readmodels.consumer import Reject
from serving.readmodels.metrics import ServingMetrics
from serving.recommend import ItemInfo
from stores import Batch, ItemIndex, ItemStore, OffsetStore
from streams.item_embeddings import materialize
from streams.schemas import ItemEmbedding


class ItemMaterializer:
    """Applies ``item-embeddings`` records; ``index`` is None until the first embedding fixes
    the dimension.

    What answers queries from the index and the catalog hears of every change: ``on_index``
    (an index was installed), ``on_upserted`` (the normalized vectors just indexed) and
    ``on_deleted`` (the ids just removed from the catalog and the index).
    """

    def __init__(
        self,
        items: ItemStore,
        offsets: OffsetStore,
        config: ReadModelConfig,
        metrics: ServingMetrics,
        reject: Reject,
        *,
        on_index: Callable[[ItemIndex], None],
        on_upserted: Callable[[np.ndarray], None],
        on_deleted: Callable[[list[str]], None],
    ) -> None:
        self.items = items
        self.offsets = offsets
        self.config = config
        self.metrics = metrics
        self.catalog: dict[str, ItemInfo] = {}
        self.index: ItemIndex | None = None
        self._reject = reject
        self._on_index = on_index
        self._on_upserted = on_upserted
        self._on_deleted = on_deleted

    def apply(self, tp: Any, records: Iterable[Any], b: Batch) -> None:
        """Apply one partition's records of a poll; the item store's writes and the partition's
        offset go to ``b``."""
        dim = self.index.dim if self.index is not None else None
        changes = materialize(
            tp.topic,
            tp.partition,
            records,
            self.items,
            self.offsets,
            b,
            dim=dim,
            holder="the index",
            normalize=True,
            metadata=_catalog_metadata,
        )
        for rejection in changes.rejected:
            self._reject(rejection.record, tp, rejection.reason)
        puts = changes.upserted
        if puts:
            if self.index is None:
                self.install(self.new_index(changes.vectors.shape[1]))
            assert self.index is not None
            self.index.upsert(changes.upserted_ids, changes.vectors)
            # Catalog after the index: an item is returned only once it can be found.
            for r in puts:
                self.catalog[r.item_id] = ItemInfo(r.text, r.category, tuple(r.tags), r.source_ts)
            self._on_upserted(changes.vectors)
            self.metrics.records.labels(tp.topic, "upserted").inc(len(puts))
        gone = changes.deleted
        if gone:
            # Catalog first: a deleted item stops being returned before it leaves the index.
            for item_id in gone:
                self.catalog.pop(item_id, None)
            if self.index is not None:
                self.index.delete(gone)
            self._on_deleted(gone)
            self.metrics.records.labels(tp.topic, "deleted").inc(len(gone))
        if self.index is not None:
            self.metrics.index_items.set(len(self.index))

    def new_index(self, dim: int) -> ItemIndex:
        cfg = self.config
        return ItemIndex(
            dim,
            M=cfg.index_M,
            ef_construction=cfg.index_ef_construction,
            ef=cfg.index_ef,
            copies=cfg.index_copies,
            initial_capacity=4096,
        )

    def install(self, index: ItemIndex) -> None:
        self.index = index
        self._on_index(index)

    def load_catalog(self) -> None:
        """The catalog of every item in the item store (on restore)."""
        for item in self.items.iterate():
            self.catalog[item.item_id] = _item_info(item.metadata, item.ts)


def _catalog_metadata(rec: ItemEmbedding) -> dict[str, Any]:
    """What the item store keeps of an item for the catalog (read back by ``_item_info``)."""
    return {"title": rec.text, "category": rec.category, "tags": rec.tags}


def _item_info(metadata: dict[str, Any], ts: int) -> ItemInfo:
    return ItemInfo(
        str(metadata.get("title") or ""),
        metadata.get("category"),
        tuple(metadata.get("tags") or ()),
        ts,
    )

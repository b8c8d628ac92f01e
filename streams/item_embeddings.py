"""``item-embeddings`` -> an item store: the one materializer of the topic, used by the
interests worker's item feed and the serving read models.

`materialize` takes one partition's records of a poll (anything with ``.key``, ``.value``,
``.offset``: aiokafka's and kafka-python's records alike) and writes them with the partition's
next offset into one `Batch`:

- each ``item_embedding`` record is decoded (the vector checked against its ``dim``); for an
  item the partition's last record wins, a tombstone (keyed by the item id) deletes it (one
  without a key, or with a key that is not UTF-8, is rejected);
- an item store holds one dimension: a record of another is rejected. The reader says which
  dimension holds and what holds it (the worker its item store's, serving its index's), so the
  reason is the reader's own; none yet: the first record applied fixes it;
- records that cannot be applied come back as `Rejection` s with their reason: the reader
  decides whether to log or to dead-letter them.

What changed comes back as `ItemChanges`, so that each reader updates only what is its own
(the worker's LRU and parked events, serving's index, catalog and dead letters). Pure of Kafka
clients: no consumer, no producer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stores import Batch, ItemStore, OffsetStore, normalize_rows
from streams.schemas import InvalidEvent, ItemEmbedding, decode_for_topic, tombstone_key


class Record(Protocol):
    """One consumer record, as both Kafka clients give it."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True)
class Rejection:
    """A record not applied, and why."""

    record: Any
    reason: str


@dataclass
class ItemChanges:
    """What one `materialize` call wrote: ``vectors`` are the rows of ``upserted`` as stored
    (normalized where asked), ``dim`` the dimension the records were held to (None while no
    record has fixed one)."""

    upserted: list[ItemEmbedding] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    deleted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dim: int | None = None

    @property
    def upserted_ids(self) -> list[str]:
        return [r.item_id for r in self.upserted]


def materialize(
    topic: str,
    partition: int,
    records: Iterable[Record],
    items: ItemStore,
    offsets: OffsetStore,
    batch: Batch,
    *,
    dim: int | None,
    holder: str = "the item store",
    normalize: bool = False,
    metadata: Callable[[ItemEmbedding], Mapping[str, Any]] | None = None,
) -> ItemChanges:
    """Write one partition's ``records`` to ``items`` and the next offset to ``offsets``, all
    into ``batch``; records of another dimension than ``dim``, which ``holder`` holds (named in
    the reason), are rejected (None: the first record applied fixes it). ``normalize`` stores
    unit-length vectors; ``metadata`` gives the metadata stored with each item (none by
    default). Nothing is written for no records."""
    changes = ItemChanges(dim=dim)
    # Item id -> (record, its vector), None for deleted; later records win.
    latest: dict[str, tuple[ItemEmbedding, np.ndarray] | None] = {}
    last = -1
    for m in records:
        last = m.offset
        try:
            if m.value is None:
                latest[tombstone_key(m.key)] = None
                continue
            rec = decode_for_topic(topic, m.value)
            vector = rec.array()  # checks the vector against its dim
        except InvalidEvent as exc:
            changes.rejected.append(Rejection(m, exc.reason))
            continue
        if changes.dim is None:
            changes.dim = rec.dim
        elif rec.dim != changes.dim:
            reason = f"{rec.dim}-d vector, but {holder} holds {changes.dim}-d vectors"
            changes.rejected.append(Rejection(m, reason))
            continue
        latest[rec.item_id] = (rec, vector)
    if last < 0:
        return changes
    puts = [p for p in latest.values() if p is not None]
    changes.upserted = [rec for rec, _ in puts]
    changes.deleted = [item_id for item_id, p in latest.items() if p is None]
    if puts:
        vectors = np.stack([vector for _, vector in puts])
        changes.vectors = normalize_rows(vectors) if normalize else vectors
        items.put_many(
            changes.upserted_ids,
            changes.vectors,
            encoder_version=[r.encoder_version for r in changes.upserted],
            metadata=None if metadata is None else [metadata(r) for r in changes.upserted],
            ts=[r.source_ts for r in changes.upserted],
            batch=batch,
        )
    if changes.deleted:
        items.delete(changes.deleted, batch=batch)
    offsets.commit({f"{topic}:{partition}": last + 1}, batch=batch)
    return changes

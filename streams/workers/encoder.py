"""The encoder worker: ``items`` -> ONNX text encoder (batched) -> ``item-embeddings``.

- Item texts are encoded in batches (one poll's worth at a time, up to ``max_batch``): never
  one item at a time.
- An item that carries its own embedding is passed through after validation (finite,
  non-zero, and of the encoder's dimension, since it lands in the same index).
- ``item_deleted`` becomes a tombstone (null value) on the compacted ``item-embeddings``.
- Bad messages go to ``dead-letters`` (by the validating consumer, or here for a wrong dim).

Offsets are committed only after the broker confirmed the embeddings of a batch
(at-least-once; the compacted output topic makes redelivery harmless). A commit refused
because the group dropped the worker (e.g. the broker was unreachable past the session
timeout), or one the broker did not answer in time, leaves the batch to be delivered again
or to the next commit; the worker goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from streams.consumer import Accepted, ValidatingConsumer
from streams.publish import Publisher
from streams.schemas import Item, ItemDeleted, ItemEmbedding
from streams.settings import KafkaSettings
from streams.topics import ITEM_EMBEDDINGS, ITEMS

log = logging.getLogger(__name__)

GROUP_ID = "recstream-encoder"


class TextEncoder(Protocol):
    """What the worker needs from an encoder (``encoders.EncoderSession`` provides it)."""

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...

    def encode_items(self, items: Sequence[Any]) -> np.ndarray:
        """(n, dim) float32 L2-normalized embeddings of items (text, category, tags)."""
        ...


@dataclass
class EncoderWorkerStats:
    embedded: int = 0
    passed_through: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits_refused: int = 0  # commits that failed: dropped from the group, or timed out


class EncoderWorker:
    """Consume items, embed them in batches, publish item embeddings."""

    def __init__(
        self,
        settings: KafkaSettings,
        encoder: TextEncoder,
        *,
        group_id: str = GROUP_ID,
        max_batch: int = 256,
        poll_timeout_ms: int = 100,
        vector_dtype: str = "float32",
    ) -> None:
        if vector_dtype not in ("float32", "float16"):
            raise ValueError(f"vector_dtype must be 'float32' or 'float16', not {vector_dtype!r}")
        self.settings = settings
        self.encoder = encoder
        self.max_batch = max_batch
        self.poll_timeout_ms = poll_timeout_ms
        self.vector_dtype: Literal["float32", "float16"] = (
            "float16" if vector_dtype == "float16" else "float32"
        )
        self.stats = EncoderWorkerStats()
        self._publisher = Publisher(settings, linger_ms=5)
        # Its dead letters go through a producer of their own, settled before each commit.
        self._consumer = ValidatingConsumer(
            settings,
            [ITEMS.name],
            rejected_by="encoder-worker",
            group_id=group_id,
            max_poll_records=max_batch,
        )
        self._stop = threading.Event()

    def process(self, accepted: Sequence[Accepted]) -> None:
        """Embed and publish one batch (in input order per item key)."""
        to_encode: list[tuple[int, Item]] = []
        out: list[Any] = [None] * len(accepted)
        for i, acc in enumerate(accepted):
            ev = acc.event
            if isinstance(ev, ItemDeleted):
                out[i] = ev
            elif isinstance(ev, Item) and ev.embedding is not None:
                vec = np.asarray(ev.embedding, dtype=np.float32)
                if vec.shape[0] != self.encoder.dim:
                    self._reject(
                        acc,
                        f"embedding has dim {vec.shape[0]}, the index expects {self.encoder.dim}",
                    )
                    continue
                out[i] = self._record(ev, vec / np.linalg.norm(vec), "precomputed")
                self.stats.passed_through += 1
            elif isinstance(ev, Item):
                to_encode.append((i, ev))
        if to_encode:
            encoded = self._encode(to_encode, accepted)
            for (i, ev), maybe in zip(to_encode, encoded, strict=True):
                if maybe is not None:
                    out[i] = self._record(ev, maybe, self.encoder.version)
                    self.stats.embedded += 1
        for rec in out:
            if isinstance(rec, ItemDeleted):
                self._publisher.send(ITEM_EMBEDDINGS.name, None, key=rec.key)
                self.stats.deleted += 1
            elif rec is not None:
                self._publisher.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)
        self._publisher.flush()
        self.stats.batches += 1

    def _encode(
        self, to_encode: Sequence[tuple[int, Item]], accepted: Sequence[Accepted]
    ) -> list[np.ndarray | None]:
        """Embeddings of the batch; an item the encoder fails on goes to dead-letters alone.

        When the batch fails, each item is retried by itself. If none of them can be encoded
        the encoder itself is broken (not the items): raise, and the batch is redelivered.
        """
        items = [ev for _, ev in to_encode]
        try:
            return list(self.encoder.encode_items(items))
        except Exception as exc:
            log.warning(
                "encoding a batch of %d items failed (%s); retrying one by one", len(items), exc
            )
        out: list[np.ndarray | None] = []
        failures: list[tuple[int, Exception]] = []
        for i, ev in to_encode:
            try:
                out.append(self.encoder.encode_items([ev])[0])
            except Exception as exc:
                out.append(None)
                failures.append((i, exc))
        if len(failures) == len(items) > 1:
            raise RuntimeError(f"the encoder fails on every item: {failures[0][1]}")
        for i, error in failures:
            self._reject(
                accepted[i], f"the encoder failed on this item: {type(error).__name__}: {error}"
            )
        return out

    def _reject(self, acc: Accepted, reason: str) -> None:
        """Send an accepted (valid) item the worker cannot embed to dead-letters."""
        self._consumer.dead_letters.reject(
            acc.event.to_json(),
            reason,
            source_topic=acc.topic,
            partition=acc.partition,
            offset=acc.offset,
            key=acc.key,
        )
        self.stats.dead_lettered += 1

    def _record(self, item: Item, vec: np.ndarray, version: str) -> ItemEmbedding:
        return ItemEmbedding.from_vector(
            item.item_id,
            vec,
            encoder_version=version,
            source_ts=item.ts,
            dtype=self.vector_dtype,
            text=item.text,
            category=item.category,
            tags=list(item.tags),
        )

    def run_once(self) -> int:
        letters = self._consumer.dead_letters
        rejected = letters.count
        accepted = self._consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_batch)
        if accepted:
            self.process(accepted)
        self._publisher.flush()
        letters.settle()  # the poll's were; these are the batch's own
        # A poll of rejects only moves the offsets too; an idle poll commits nothing.
        if accepted or letters.count != rejected:
            self._commit()
        return len(accepted)

    def _commit(self) -> None:
        """Commit what was polled. A commit that fails because the group dropped this worker
        (the broker unreachable past the session timeout: the partitions may have moved) or
        because the broker did not answer in time is not fatal: the batch's records are
        confirmed already. The next poll joins the group again if need be; the batch comes
        again from the last commit to whoever owns its partitions (a redelivered item makes
        the same record on a compacted topic), or the next commit covers it."""
        from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

        try:
            self._consumer.commit()
        except KafkaError as exc:
            if not isinstance(exc, CommitFailedError | RebalanceInProgressError) and not getattr(
                exc, "retriable", False
            ):
                raise
            self.stats.commits_refused += 1
            log.warning("offsets not committed, the batch will come again: %r", exc)

    def run(self, *, idle_exit_s: float | None = None) -> None:
        """Loop until ``stop()`` (or ``idle_exit_s`` without input, for tools and tests)."""
        last = time.monotonic()
        while not self._stop.is_set():
            if self.run_once():
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                break

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            self._consumer.close()
        finally:
            self._publisher.close()

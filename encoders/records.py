"""Reading items/engagements JSONL logs tolerantly, and ``encode_jsonl`` (``recstream encode``).

Formats (recstream's event schemas, version 1; unknown keys are ignored):

- items: ``{"type": "item", "item_id": str, "text": str, "category": str|null, "tags": [str],
  "embedding": [float]|null, "ts": int_ms}``; a later line for the same id replaces the earlier.
- engagements: ``{"type": "engagement", "user_id": str, "item_id": str, "action": str,
  "weight": float|null, "ts": int_ms}``.

Lines that are not JSON objects of the expected type, or lack an id, are skipped and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

log = logging.getLogger(__name__)

_BATCH = 256  # item lines embedded per EncoderSession call in encode_jsonl


@dataclass
class ItemTable:
    """Items in first-seen order; ``index`` maps item id to row."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, obj: dict[str, Any]) -> None:
        item_id = str(obj["item_id"])
        tags = obj.get("tags")
        row = (
            str(obj.get("text") or ""),
            obj["category"] if isinstance(obj.get("category"), str) else None,
            [str(t) for t in tags] if isinstance(tags, list) else [],
        )
        if item_id in self.index:
            i = self.index[item_id]
            self.texts[i], self.categories[i], self.tags[i] = row
            return
        self.index[item_id] = len(self.ids)
        self.ids.append(item_id)
        self.texts.append(row[0])
        self.categories.append(row[1])
        self.tags.append(row[2])


@dataclass(frozen=True)
class Engagements:
    """Engagements sorted by (user, ts): user codes, item rows (into an ``ItemTable``), ts (ms)."""

    users: np.ndarray  # int64 codes
    items: np.ndarray  # int64 rows of the item table
    ts: np.ndarray  # int64 ms
    skipped: int = 0
    unknown_items: int = 0

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def iter_json_objects(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line's JSON object, or None for a line that is not one (blank lines skipped)."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                yield None
                continue
            yield obj if isinstance(obj, dict) else None


def _is(obj: dict[str, Any] | None, kind: str, *keys: str) -> bool:
    return (
        obj is not None
        and obj.get("type", kind) == kind
        and all(isinstance(obj.get(k), str) and obj[k] for k in keys)
    )


def read_items(path: Path) -> ItemTable:
    table = ItemTable()
    for obj in iter_json_objects(path):
        if obj is not None and _is(obj, "item", "item_id"):
            table.add(obj)
        else:
            table.skipped += 1
    return table


def read_engagements(path: Path, items: ItemTable) -> Engagements:
    """Engagements with items known to ``items``, sorted by user then time."""
    users: dict[str, int] = {}
    rows: list[tuple[int, int, int]] = []
    skipped = unknown = 0
    for obj in iter_json_objects(path):
        if obj is None or not _is(obj, "engagement", "user_id", "item_id"):
            skipped += 1
            continue
        ts = obj.get("ts")
        if not isinstance(ts, int | float):
            skipped += 1
            continue
        row = items.index.get(obj["item_id"])
        if row is None:
            unknown += 1
            continue
        rows.append((users.setdefault(obj["user_id"], len(users)), row, int(ts)))
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    order = np.lexsort((arr[:, 2], arr[:, 0]))
    arr = arr[order]
    return Engagements(arr[:, 0], arr[:, 1], arr[:, 2], skipped=skipped, unknown_items=unknown)


@dataclass(frozen=True)
class EncodeReport:
    written: int
    encoded: int
    precomputed: int
    skipped: int
    seconds: float
    encoder_version: str


def _embedding_line(
    obj: dict[str, Any], vector: np.ndarray, version: str, dim: int
) -> dict[str, Any]:
    # The ``item_embedding`` event of recstream's schemas (base64 of little-endian float32).
    tags = obj.get("tags")
    return {
        "type": "item_embedding",
        "v": 1,
        "item_id": obj["item_id"],
        "vector": pybase64.b64encode(vector.astype("<f4").tobytes()).decode(),
        "dtype": "float32",
        "dim": dim,
        "encoder_version": version,
        "source_ts": int(obj.get("ts") or 0),
        "text": str(obj.get("text") or ""),
        "category": obj["category"] if isinstance(obj.get("category"), str) else None,
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
    }


def _precomputed(obj: dict[str, Any]) -> np.ndarray | None:
    emb = obj.get("embedding")
    if not isinstance(emb, list) or not emb:
        return None
    try:
        vec = np.asarray(emb, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    norm = float(np.linalg.norm(vec))
    if vec.ndim != 1 or not np.isfinite(norm) or norm == 0.0:
        return None
    return vec / norm


def encode_jsonl(
    in_path: Path,
    out_path: Path,
    model_dir: Path | None = None,
    *,
    variant: str = "auto",
) -> EncodeReport:
    """Embed every ``item`` line of ``in_path``; write ``item_embedding`` lines to ``out_path``.

    ``out_path`` "-" writes to stdout.

    Items carrying a precomputed ``embedding`` keep it (L2-normalized, version "precomputed");
    the others are embedded from ``item_text(text, category, tags)`` by an ``EncoderSession`` on
    ``model_dir`` (default: ``ensure_exported()``'s dir).
    """
    from encoders.session import EncoderSession

    if model_dir is None:
        from encoders.models import default_model_dir, ensure_exported

        model_dir = default_model_dir()
        ensure_exported(model_dir)
    session = EncoderSession(Path(model_dir), variant=variant)
    start = time.perf_counter()
    written = encoded = precomputed = skipped = 0
    batch: list[dict[str, Any]] = []

    def flush(out: Any) -> None:
        nonlocal written, encoded, precomputed
        owns = [_precomputed(obj) for obj in batch]
        todo = [obj for obj, own in zip(batch, owns, strict=True) if own is None]
        vectors = iter(session.encode_items(todo) if todo else ())
        for obj, own in zip(batch, owns, strict=True):
            if own is not None:
                line = _embedding_line(obj, own, "precomputed", int(own.shape[0]))
                precomputed += 1
            else:
                line = _embedding_line(obj, next(vectors), session.version, session.dim)
                encoded += 1
            out.write(json.dumps(line) + "\n")
        written += len(batch)
        batch.clear()

    to_stdout = str(out_path) == "-"
    if not to_stdout:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.nullcontext(sys.stdout)
        if to_stdout
        else Path(out_path).open("w", encoding="utf-8")
    ) as out:
        for obj in iter_json_objects(Path(in_path)):
            if obj is None or obj.get("type", "item") != "item" or not _is(obj, "item", "item_id"):
                skipped += 1
                continue
            batch.append(obj)
            if len(batch) >= _BATCH:
                flush(out)
        if batch:
            flush(out)
    if skipped:
        log.warning("%s: skipped %d lines that are not item events", in_path, skipped)
    return EncodeReport(
        written, encoded, precomputed, skipped, time.perf_counter() - start, session.version
    )

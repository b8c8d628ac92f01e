"""Item text, tokenization to model inputs, and hashed category/tag ids (no torch).

``item_text`` is the one place that decides how an item's category and tags join its text, so
export checks, training and inference all see the same strings.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

MAX_TAGS = 8  # tags beyond the first 8 are ignored by the head (the text keeps them)


def item_text(text: str | None, category: str | None = None, tags: Iterable[str] = ()) -> str:
    """``"text | category | tag1, tag2"``, leaving out empty parts."""
    parts = [(text or "").strip()]
    if category and category.strip():
        parts.append(category.strip())
    tag_list = [t.strip() for t in tags if t and t.strip()]
    if tag_list:
        parts.append(", ".join(tag_list))
    return " | ".join(p for p in parts if p)


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A ``tokenizers`` tokenizer that truncates to ``max_length`` tokens and does not pad."""
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def pad_batch(encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64), right-padded with 0 to the longest."""
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    width = max(int(lengths.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    if len(encodings):
        ids[mask] = np.concatenate([e.ids for e in encodings])
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64)}


def hash_bucket(value: str, buckets: int, salt: str) -> int:
    """A stable bucket in ``1..buckets-1`` (0 means none/padding); case and spaces ignored."""
    key = f"{salt}:{value.strip().lower()}".encode()
    return 1 + zlib.crc32(key) % (buckets - 1)


def category_ids(categories: Sequence[str | None], buckets: int) -> np.ndarray:
    """(n,) int64 hashed category ids, 0 where there is no category."""
    return np.fromiter(
        (hash_bucket(c, buckets, "category") if c and c.strip() else 0 for c in categories),
        dtype=np.int64,
        count=len(categories),
    )


def tag_ids(tags: Sequence[Iterable[str]], buckets: int, max_tags: int = MAX_TAGS) -> np.ndarray:
    """(n, max_tags) int64 hashed tag ids, right-padded with 0."""
    out = np.zeros((len(tags), max_tags), dtype=np.int64)
    for row, item_tags in enumerate(tags):
        ids = [hash_bucket(t, buckets, "tag") for t in item_tags if t and t.strip()][:max_tags]
        out[row, : len(ids)] = ids
    return out


def item_fields(item: Any) -> tuple[str, str | None, list[str]]:
    """(text, category, tags) of a mapping or an object with those attributes."""
    if isinstance(item, dict):
        text, category, tags = item.get("text"), item.get("category"), item.get("tags")
    else:
        text = getattr(item, "text", None)
        category = getattr(item, "category", None)
        tags = getattr(item, "tags", None)
    tag_list = [str(t) for t in tags] if isinstance(tags, list | tuple) else []
    return (
        str(text) if text is not None else "",
        str(category) if category is not None else None,
        tag_list,
    )

"""The shared ``item-embeddings`` materializer (streams.item_embeddings), without a broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stores import StateDB
from streams.item_embeddings import ItemChanges, materialize
from streams.schemas import ItemEmbedding
from streams.topics import ITEM_EMBEDDINGS

TOPIC = ITEM_EMBEDDINGS.name


@dataclass(frozen=True)
class Rec:
    """A consumer record as both Kafka clients give it."""

    offset: int
    key: bytes | None
    value: bytes | None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB(tmp_path / "state") as opened:
        yield opened


def _embedding(item_id: str, vector: list[float], **kw: Any) -> ItemEmbedding:
    return ItemEmbedding.from_vector(
        item_id, np.array(vector, dtype=np.float32), encoder_version="t", source_ts=7, **kw
    )


def _records(*values: ItemEmbedding | tuple[str, None] | bytes, start: int = 0) -> list[Rec]:
    """Records at consecutive offsets: an embedding, a tombstone ``(key, None)`` or raw bytes."""
    out = []
    for n, v in enumerate(values, start):
        if isinstance(v, ItemEmbedding):
            out.append(Rec(n, v.key, v.to_json()))
        elif isinstance(v, tuple):
            out.append(Rec(n, v[0].encode(), None))
        else:
            out.append(Rec(n, b"bad", v))
    return out


def _apply(db: StateDB, records: list[Rec], *, dim: int | None = None, **kw: Any) -> ItemChanges:
    with db.batch() as batch:
        return materialize(TOPIC, 2, records, db.items, db.offsets, batch, dim=dim, **kw)


def test_the_last_record_of_an_item_wins_and_the_offset_follows_the_last_record(
    db: StateDB,
) -> None:
    records = _records(
        _embedding("a", [1, 0, 0]), _embedding("b", [0, 1, 0]), _embedding("a", [0, 0, 2])
    )
    changes = _apply(db, records)
    assert changes.upserted_ids == ["a", "b"]
    np.testing.assert_array_equal(changes.vectors, [[0, 0, 2], [0, 1, 0]])
    assert changes.deleted == [] and changes.rejected == [] and changes.dim == 3
    ids, vectors = db.items.vectors(["a", "b"])
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(vectors, [[0, 0, 2], [0, 1, 0]])
    assert db.offsets.load() == {f"{TOPIC}:2": 3}


def test_a_tombstone_deletes_and_a_later_record_brings_the_item_back(db: StateDB) -> None:
    _apply(db, _records(_embedding("a", [1, 0]), _embedding("b", [0, 1])))
    records = _records(
        ("a", None),
        _embedding("b", [1, 1]),
        ("b", None),
        ("c", None),
        _embedding("c", [2, 0]),
        start=2,
    )
    changes = _apply(db, records, dim=2)
    assert changes.upserted_ids == ["c"] and changes.deleted == ["a", "b"]
    assert "a" not in db.items and "b" not in db.items
    np.testing.assert_array_equal(db.items.vectors(["c"])[1], [[2, 0]])
    assert db.offsets.load() == {f"{TOPIC}:2": 7}


def test_a_tombstone_without_a_key_or_with_a_key_not_utf8_is_rejected(db: StateDB) -> None:
    _apply(db, _records(_embedding("a", [1, 0])))
    records = [Rec(1, None, None), Rec(2, b"", None), Rec(3, b"\xff", None), Rec(4, b"a", b"")]
    changes = _apply(db, records, dim=2)
    assert [(r.record.offset, r.reason) for r in changes.rejected] == [
        (1, "empty message (tombstone without a key)"),
        (2, "empty message (tombstone without a key)"),
        (3, "tombstone key is not UTF-8"),
        (4, "empty message (zero-length value)"),
    ]
    assert changes.deleted == [] and "a" in db.items
    assert db.offsets.load() == {f"{TOPIC}:2": 5}


def test_a_bad_record_is_reported_with_its_reason_and_the_others_apply(db: StateDB) -> None:
    good = _embedding("a", [1, 0])
    short = json.loads(_embedding("b", [1, 0]).to_json())
    short["dim"] = 3  # the vector holds 2 values
    records = _records(b"not json", good, json.dumps(short).encode())
    changes = _apply(db, records)
    assert [(r.record.offset, r.reason) for r in changes.rejected] == [
        (0, "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (2, "vector has 2 values, dim says 3"),
    ]
    assert changes.upserted_ids == ["a"] and "b" not in db.items
    assert db.offsets.load() == {f"{TOPIC}:2": 3}  # past the bad records too


def test_a_record_of_another_dimension_is_reported_and_the_item_keeps_its_vector(
    db: StateDB,
) -> None:
    wide = _embedding("a", [1, 2, 3])
    records = _records(_embedding("a", [1, 0]), wide, _embedding("b", [0, 1]))
    changes = _apply(db, records, dim=2, holder="the index")
    [rejection] = changes.rejected
    assert rejection.record.offset == 1 and rejection.record.value == wide.to_json()
    # The reader names what holds the dimension (by default the item store written).
    assert rejection.reason == "3-d vector, but the index holds 2-d vectors"
    assert changes.upserted_ids == ["a", "b"] and changes.dim == 2
    np.testing.assert_array_equal(db.items.vectors(["a"])[1], [[1, 0]])


def test_without_a_dimension_the_first_record_fixes_it(db: StateDB) -> None:
    records = _records(_embedding("a", [1, 2, 3]), _embedding("b", [1, 0]))
    changes = _apply(db, records, dim=None)
    assert changes.dim == 3 and changes.upserted_ids == ["a"]
    assert [(r.record.key, r.reason) for r in changes.rejected] == [
        (b"b", "2-d vector, but the item store holds 3-d vectors")
    ]
    assert db.items.dim == 3


def test_items_and_offsets_are_written_in_the_same_batch(db: StateDB) -> None:
    records = _records(_embedding("a", [1, 0]), ("b", None))
    with pytest.raises(RuntimeError), db.batch() as batch:
        materialize(TOPIC, 0, records, db.items, db.offsets, batch, dim=None)
        assert "a" not in db.items and db.offsets.load() == {}  # nothing before the batch
        raise RuntimeError("the poll fails")
    assert "a" not in db.items and db.offsets.load() == {}  # nor after a failed one
    with db.batch() as batch:
        materialize(TOPIC, 0, records, db.items, db.offsets, batch, dim=None)
        assert len(batch) > 0 and "a" not in db.items
    assert "a" in db.items and db.offsets.load() == {f"{TOPIC}:0": 2}


def test_no_records_write_nothing(db: StateDB) -> None:
    changes = _apply(db, [])
    assert changes.upserted == changes.deleted == changes.rejected == []
    assert changes.vectors.shape == (0, 0) and changes.dim is None
    assert db.offsets.load() == {} and db.items.dim is None


def test_vectors_are_normalized_and_metadata_stored_when_asked(db: StateDB) -> None:
    records = _records(_embedding("a", [3, 4], text="shoe", category="c"))
    changes = _apply(
        db, records, normalize=True, metadata=lambda r: {"title": r.text, "category": r.category}
    )
    np.testing.assert_allclose(changes.vectors, [[0.6, 0.8]], rtol=1e-6)
    stored = db.items.get("a")
    assert stored is not None and stored.metadata == {"title": "shoe", "category": "c"}
    assert stored.encoder_version == "t" and stored.ts == 7
    np.testing.assert_allclose(stored.vector, [0.6, 0.8], rtol=1e-6)
    unnormalized = _apply(db, _records(_embedding("b", [3, 4]), start=1))
    np.testing.assert_array_equal(unnormalized.vectors, [[3, 4]])
    assert db.items.get("b").metadata == {}  # type: ignore[union-attr]


@pytest.mark.parametrize("vector", [[0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]])
def test_a_zero_or_non_finite_vector_is_rejected_and_the_others_apply(
    db: StateDB, vector: list[float]
) -> None:
    changes = _apply(db, _records(_embedding("a", vector), _embedding("b", [0.6, 0.8])))
    assert [r.reason for r in changes.rejected] == ["vector must be finite and non-zero"]
    assert changes.upserted_ids == ["b"]
    assert db.items.dim == 2 and "a" not in db.items

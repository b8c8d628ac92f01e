"""ItemIndex snapshots: atomic generations with offsets, identical answers after restore,
and corrupt or half-written snapshots ignored (restore falls back to None = full replay)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from serving.datasets.vectors import clustered_unit_vectors
from stores import ExactIndex, ItemIndex, SnapshotError, normalize_rows
from stores.snapshot import verify

DIM = 64
OFFSETS = {"item-embeddings:0": 4000, "item-embeddings:1": 3871}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors, _ = clustered_unit_vectors(6000 + 300, DIM, clusters=60, seed=11)
    return vectors[:6000], vectors[6000:]


def built(data: tuple[np.ndarray, np.ndarray], *, ef: int = 64, copies: int = 2) -> ItemIndex:
    """An index that has seen inserts, replacements, deletes and slot reuse."""
    vectors, _ = data
    index = ItemIndex(DIM, ef=ef, copies=copies, initial_capacity=512, num_threads=2)
    index.upsert([f"v{i}" for i in range(3000)], vectors[:3000])
    index.upsert([f"v{i}" for i in range(0, 300)], vectors[5000:5300])  # replaced
    index.delete([f"v{i}" for i in range(500, 800)])
    index.upsert([f"w{i}" for i in range(200)], vectors[5500:5700])  # into deleted slots
    return index


def restored(directory: Path, **kwargs: int) -> tuple[ItemIndex, dict[str, int]]:
    result = ItemIndex.restore(directory, **kwargs)
    assert result is not None, "a fresh snapshot did not restore"
    return result


def test_restore_gives_identical_answers_ef_and_offsets(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    _, queries = data
    index = built(data, ef=200)
    before = index.knn_batch(queries, 10)
    assert before != index.knn_batch(queries, 10, ef=10)  # so a lost ef would show below

    path = index.snapshot(tmp_path, OFFSETS)
    copy, offsets = restored(tmp_path)

    assert path.parent == tmp_path and path.name.startswith("snap-")
    assert offsets == OFFSETS
    assert copy.ef == 200
    assert copy.knn_batch(queries, 10) == before  # same ids, same scores, same order
    assert sorted(copy.ids()) == sorted(index.ids()) and copy.capacity == index.capacity
    assert copy.knn_batch(queries, 10, exclude={"v1"}) == index.knn_batch(
        queries, 10, exclude={"v1"}
    )


def test_a_restored_index_keeps_taking_writes(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vectors, _ = data
    index = built(data)
    index.snapshot(tmp_path, OFFSETS)
    copy, _ = restored(tmp_path, copies=1)
    assert copy.copies == 1

    copy.delete(["v1", "w0"])
    copy.upsert(["fresh", "v2"], vectors[5800:5802])  # new labels must not collide

    assert copy.knn(vectors[5800], 1)[0].item_id == "fresh"
    assert copy.knn(vectors[5801], 1)[0].item_id == "v2"
    assert "v1" not in copy and "w0" not in copy and "w1" in copy
    assert len(copy) == len(index) - 1
    assert copy.capacity == index.capacity  # "fresh" took a deleted slot


def test_newest_generations_are_kept_and_the_newest_restored(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vectors, _ = data
    index = ItemIndex(DIM)
    for generation in range(4):
        index.upsert(f"g{generation}", vectors[generation])
        index.snapshot(tmp_path, {"item-embeddings:0": generation}, keep=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap-0000000003", "snap-0000000004"]
    copy, offsets = restored(tmp_path)
    assert offsets == {"item-embeddings:0": 3} and len(copy) == 4
    older, _ = restored(tmp_path / "snap-0000000003")  # one generation, named directly
    assert len(older) == 3


def test_a_corrupt_snapshot_is_ignored_with_a_warning(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vectors, _ = data
    index = ItemIndex(DIM)
    index.upsert([f"v{i}" for i in range(500)], vectors[:500])
    path = index.snapshot(tmp_path, OFFSETS)
    graph = path / "index.hnsw"
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))

    with caplog.at_level(logging.WARNING, logger="stores"):
        assert ItemIndex.restore(tmp_path) is None
    assert "fails its sha256 checksum" in caplog.text
    assert "full replay" in caplog.text


@pytest.mark.parametrize(
    "damage",
    ["truncate_index", "drop_manifest", "drop_labels", "garble_manifest", "labels_mismatch"],
)
def test_a_damaged_newest_generation_falls_back_to_the_older_one(
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    vectors, queries = data
    index = ItemIndex(DIM, num_threads=2)
    index.upsert([f"v{i}" for i in range(2000)], vectors[:2000])
    index.snapshot(tmp_path, {"item-embeddings:0": 2000})
    answers = index.knn_batch(queries[:50], 5)
    index.upsert([f"v{i}" for i in range(2000, 2100)], vectors[2000:2100])
    newest = index.snapshot(tmp_path, {"item-embeddings:0": 2100})

    if damage == "truncate_index":
        with (newest / "index.hnsw").open("r+b") as f:
            f.truncate(1000)
    elif damage == "drop_manifest":  # as if the process died before writing it
        (newest / "manifest.json").unlink()
    elif damage == "drop_labels":
        (newest / "labels.json").unlink()
    elif damage == "garble_manifest":
        (newest / "manifest.json").write_text("{not json", encoding="utf-8")
    elif damage == "labels_mismatch":  # consistent checksums, inconsistent content
        manifest = json.loads((newest / "manifest.json").read_text(encoding="utf-8"))
        manifest["live"] = 5
        (newest / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="stores"):
        copy, offsets = restored(tmp_path)
    assert offsets == {"item-embeddings:0": 2000}  # the tail will be replayed from here
    assert copy.knn_batch(queries[:50], 5) == answers
    assert newest.name in caplog.text


def test_half_written_and_missing_snapshots_mean_full_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".tmp-crashed").mkdir()
    (tmp_path / ".tmp-crashed" / "index.hnsw").write_bytes(b"partial")
    (tmp_path / "snap-0000000001").mkdir()  # renamed but empty: cannot happen, still refused

    with caplog.at_level(logging.WARNING, logger="stores"):
        assert ItemIndex.restore(tmp_path) is None
        assert ItemIndex.restore(tmp_path / "does-not-exist") is None
    assert "no manifest" in caplog.text

    index = ItemIndex(DIM)
    index.upsert("a", normalize_rows(np.ones((1, DIM))))
    index.snapshot(tmp_path, {})
    assert not (tmp_path / ".tmp-crashed").exists()  # a crash's leftovers are cleaned up
    with pytest.raises(SnapshotError, match="no manifest"):
        verify(tmp_path / "snap-0000000001")


def test_an_exact_index_snapshots_and_restores_the_same_way(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vectors, queries = data
    index = ExactIndex(DIM)
    index.upsert([f"v{i}" for i in range(1000)], vectors[:1000])
    index.delete([f"v{i}" for i in range(0, 1000, 3)])
    index.snapshot(tmp_path, OFFSETS)

    result = ExactIndex.restore(tmp_path)

    assert result is not None
    copy, offsets = result
    assert offsets == OFFSETS and sorted(copy.ids()) == sorted(index.ids())
    assert copy.knn_batch(queries, 10) == index.knn_batch(queries, 10)
    copy.upsert("new", vectors[1000])
    assert copy.knn(vectors[1000], 1)[0].item_id == "new"
    with caplog.at_level(logging.WARNING, logger="stores"):
        assert ItemIndex.restore(tmp_path) is None  # not an HNSW snapshot: refused, not misread
    assert "unknown format" in caplog.text


def test_a_snapshot_carries_no_vector_of_a_deleted_or_replaced_item_and_still_answers(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vectors, queries = data
    index = ItemIndex(DIM, ef=200, initial_capacity=4096)
    index.upsert([f"v{i}" for i in range(2000)], vectors[:2000])
    index.delete([f"v{i}" for i in range(100)])  # marked deleted: still in hnswlib's graph
    index.upsert([f"v{i}" for i in range(100, 150)], vectors[3000:3050])  # old ones replaced
    gone = normalize_rows(vectors[:150])
    live = normalize_rows(vectors[150:2000])
    before = index.knn_batch(queries, 10)

    path = index.snapshot(tmp_path, OFFSETS)
    saved = b"".join(f.read_bytes() for f in sorted(path.iterdir()))
    assert sum(row.tobytes() in saved for row in gone) == 0
    assert all(row.tobytes() in saved for row in live)
    # The labels file names live items only.
    labels = json.loads((path / "labels.json").read_text())
    assert not {f"v{i}" for i in range(100)} & set(labels["ids"])

    copy, _ = restored(tmp_path)
    assert len(copy) == 1900 and "v0" not in copy
    # The zeroed elements stay waypoints that are never returned; the answers hold.
    after = copy.knn_batch(queries, 10)
    assert all(h.item_id not in {f"v{i}" for i in range(100)} for row in after for h in row)
    overlap = np.mean(
        [
            len({h.item_id for h in a} & {h.item_id for h in b}) / 10
            for a, b in zip(after, before, strict=True)
        ]
    )
    assert overlap >= 0.95
    copy.upsert([f"n{i}" for i in range(200)], vectors[4000:4200])  # reuses zeroed slots
    assert [h.item_id for h in copy.knn(vectors[4100], 1)] == ["n100"]


def test_scrubbing_refuses_a_file_of_another_layout(tmp_path: Path) -> None:
    from stores.hnsw_file import HnswFileError, scrub_deleted_vectors

    index = ItemIndex(DIM, initial_capacity=64)
    index.upsert(["a", "b"], np.eye(DIM, dtype=np.float32)[:2])
    index.delete("a")
    path = index.snapshot(tmp_path, OFFSETS)
    with pytest.raises(HnswFileError, match="layout"):
        scrub_deleted_vectors(path / "index.hnsw", DIM * 2)  # another dimension
    (tmp_path / "short.hnsw").write_bytes(b"\x00" * 40)
    with pytest.raises(HnswFileError, match="shorter than the header"):
        scrub_deleted_vectors(tmp_path / "short.hnsw", DIM)

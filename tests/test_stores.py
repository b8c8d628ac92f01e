"""RocksDB state (stores.kv): items, users, offsets round trips, atomic batches, locking."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stores import CachedItemVectors, StateDB, StoreLockedError


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB(tmp_path / "state") as opened:
        yield opened


def test_items_round_trip_with_encoder_version_metadata_and_ts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 8)).astype(np.float32)
    with StateDB(tmp_path / "s") as db:
        db.items.put_many(
            ["a", "b", "c"],
            vectors,
            encoder_version=["minilm-1", "minilm-1", "minilm-2"],
            metadata=[{"category": "shoes", "tags": ["red"]}, None, {"title": "ünïcode"}],
            ts=[1, 2, 3],
        )
        db.items.put("d", vectors[0], encoder_version="minilm-2", ts=4)

    with StateDB(tmp_path / "s") as db:  # survives close and reopen
        a, c = db.items.get("a"), db.items.get("c")
        assert a is not None and c is not None
        assert a.vector.dtype == np.float32
        np.testing.assert_array_equal(a.vector, vectors[0])  # float32 bytes: exact
        assert (a.encoder_version, a.metadata, a.ts) == (
            "minilm-1",
            {"category": "shoes", "tags": ["red"]},
            1,
        )
        assert (c.encoder_version, c.metadata, c.ts) == ("minilm-2", {"title": "ünïcode"}, 3)
        assert db.items.get("nope") is None
        assert len(db.items) == 4 and "b" in db.items and "nope" not in db.items
        assert db.items.estimated_len() == 4  # what the worker's gauge reads, without a scan
        assert db.items.dim == 8
        assert [item.item_id for item in db.items.iterate()] == ["a", "b", "c", "d"]


def test_vectors_multi_get_keeps_order_and_drops_missing(db: StateDB) -> None:
    vectors = np.arange(40, dtype=np.float32).reshape(5, 8)
    db.items.put_many([f"i{i}" for i in range(5)], vectors, encoder_version="v", ts=0)

    ids, matrix = db.items.vectors(["i3", "missing", "i0", "i3"])

    assert ids == ["i3", "i0", "i3"]
    np.testing.assert_array_equal(matrix, vectors[[3, 0, 3]])
    ids, matrix = db.items.vectors([])
    assert ids == [] and matrix.shape == (0, 8)
    chunks = list(db.items.iterate_vectors(chunk=2))
    assert [len(c[0]) for c in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.vstack([c[1] for c in chunks]), vectors)


def test_item_delete_and_dimension_guard(db: StateDB) -> None:
    db.items.put_many(["a", "b"], np.ones((2, 4)), encoder_version="v", ts=0)
    assert db.items.delete(["a", "zzz"]) == 1
    assert db.items.get("a") is None and db.items.vectors(["a", "b"])[0] == ["b"]
    with pytest.raises(ValueError, match="holds 4-d vectors; got 5-d"):
        db.items.put("c", np.ones(5), encoder_version="v", ts=0)
    with pytest.raises(ValueError, match="one entry per item"):
        db.items.put_many(["c", "d"], np.ones((2, 4)), encoder_version=["v"], ts=0)


def test_users_keep_state_and_the_latest_record(db: StateDB) -> None:
    record_v1 = b'{"type":"user_interests","user_id":"u1","n_actions":1}'
    record_v2 = b'{"type":"user_interests","user_id":"u1","n_actions":2}'
    db.users.put("u1", b"\x00state-1\xff", record=record_v1)
    db.users.put("u1", b"\x00state-2\xff", record=record_v2)
    db.users.put("u2", b"only-state")
    db.users.put("u3", None, record=b"only-record")

    assert db.users.get("u1") == b"\x00state-2\xff" and db.users.record("u1") == record_v2
    assert db.users.record("u2") is None and db.users.record("u3") == b"only-record"
    assert len(db.users) == 3 and "u3" in db.users and "nobody" not in db.users
    assert list(db.users.iterate()) == [("u1", b"\x00state-2\xff"), ("u2", b"only-state")]

    db.users.put("u1", b"state-3")  # a put replaces both: the old record is not kept
    assert db.users.record("u1") is None
    assert db.users.delete("u1") is True and db.users.delete("u1") is False
    assert db.users.get("u1") is None and len(db.users) == 2
    with pytest.raises(ValueError, match="give a state, a record or both"):
        db.users.put("u4", None)


def test_offsets_merge_per_partition(db: StateDB) -> None:
    db.offsets.commit({"item-embeddings:0": 10, "item-embeddings:1": 7})
    db.offsets.commit({"item-embeddings:0": 12})
    assert db.offsets.load() == {"item-embeddings:0": 12, "item-embeddings:1": 7}
    with pytest.raises(ValueError, match="topic:partition"):
        db.offsets.commit({"no-partition": 1})
    with pytest.raises(ValueError, match="topic:partition"):
        db.offsets.commit({"t:0": -1})


def test_a_batch_writes_items_and_offsets_together_or_not_at_all(db: StateDB) -> None:
    with db.batch() as batch:
        db.items.put_many(["a", "b"], np.ones((2, 4)), encoder_version="v", ts=0, batch=batch)
        db.offsets.commit({"item-embeddings:0": 2}, batch=batch)
        assert db.items.get("a") is None  # not visible before the batch applies
    assert [i.item_id for i in db.items.iterate()] == ["a", "b"]
    assert db.offsets.load() == {"item-embeddings:0": 2}

    with pytest.raises(RuntimeError, match="consumer died"), db.batch() as batch:
        db.items.delete("a", batch=batch)
        db.items.put("c", np.ones(4), encoder_version="v", ts=1, batch=batch)
        db.offsets.commit({"item-embeddings:0": 4}, batch=batch)
        raise RuntimeError("consumer died")
    assert [i.item_id for i in db.items.iterate()] == ["a", "b"]  # nothing deleted or added
    assert db.offsets.load() == {"item-embeddings:0": 2}


def test_a_database_held_by_another_process_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "serving-0"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from stores import StateDB
                db = StateDB({str(path)!r})
                print("open", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="is locked") as caught:
            StateDB(path)
        assert str(path) in str(caught.value) and caught.value.path == path
    finally:
        holder.communicate("", timeout=30)  # closing stdin lets it exit, releasing the lock
    with StateDB(path) as db:  # free again
        assert db.offsets.load() == {}


def test_the_same_directory_twice_in_one_process_is_refused(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s"), pytest.raises(StoreLockedError, match=str(tmp_path / "s")):
        StateDB(tmp_path / "s")


def test_cached_vectors_serve_repeats_from_memory_and_stay_coherent(db: StateDB) -> None:
    db.items.put_many(["a", "b", "c"], np.eye(3, 4), encoder_version="v", ts=0)
    cache = CachedItemVectors(db.items, capacity=2)

    ids, matrix = cache.vectors(["a", "b", "zz"])
    assert ids == ["a", "b"] and cache.misses == 3
    np.testing.assert_array_equal(matrix, np.eye(3, 4)[:2])
    cache.vectors(["a", "b"])
    assert cache.hits == 2

    db.items.put_many(["a"], np.full((1, 4), 7.0), encoder_version="v", ts=1)
    db.items.delete("b")
    cache.invalidate(["a", "b"])  # as the worker's item feed does after each write
    ids, matrix = cache.vectors(["a", "b"])
    assert ids == ["a"] and matrix.tolist() == [[7.0] * 4]


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_a_purge_leaves_no_byte_of_deleted_or_superseded_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    gone_vector = vectors[7].tobytes()
    path = tmp_path / "state"
    with StateDB(path) as db:
        ids = [f"item-{i:02d}" for i in range(40)]
        ids[7] = "x~2b8e41!away"  # its 4-byte windows occur nowhere else (see test_forget.py)
        db.items.put_many(ids, vectors, encoder_version="v", ts=0)
        for n in range(30):
            db.users.put(f"user-{n:02d}", None, record=b'{"user":"' + bytes([65 + n]) * 8 + b'"}')
        db.users.put("u~7f3a9c!gone", None, record=b'{"medoid":"x~2b8e41!away"}')
        db.users.put("user-05", None, record=b'{"old":"~c05d17!"}')
        db.flush()  # the records reach SST files
        db.users.put("user-05", None, record=b'{"new":"record"}')  # supersedes the old one
        db.users.delete("u~7f3a9c!gone")
        db.items.delete("x~2b8e41!away")
        db.flush()
        for needle in (b"~7f3a9c!", b"~2b8e41!", b"~c05d17!", gone_vector):
            assert _files_holding(path, needle), needle  # there, before the purge

        db.purge(items=True, users=True)
        for needle in (b"~7f3a9c!", b"~2b8e41!", b"~c05d17!", gone_vector):
            assert not _files_holding(path, needle), (needle, _files_holding(path, needle))
        # Hex too: RocksDB's info log writes keys so.
        assert not _files_holding(path, b"u~7f3a9c!gone".hex().upper().encode())
        assert db.users.record("user-05") == b'{"new":"record"}' and len(db.users) == 30
        assert len(db.items) == 39 and "item-08" in db.items
    with StateDB(path) as reopened:  # intact after the purge
        found, matrix = reopened.items.vectors(["item-08", "x~2b8e41!away"])
        assert found == ["item-08"] and np.array_equal(matrix[0], vectors[8])

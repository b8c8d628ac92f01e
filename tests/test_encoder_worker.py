"""The encoder worker on the real broker: items in, item embeddings out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from encoders.export import export_text_encoder
from encoders.session import EncoderSession
from encoders.text_model import build_tiny_text_encoder
from streams.broker import EMBEDDED_ENV, EmbeddedBroker
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import DeadLetter, Item, ItemDeleted, ItemEmbedding, decode_for_topic
from streams.topics import DEAD_LETTERS, ITEM_EMBEDDINGS, ITEMS
from streams.workers.encoder import EncoderWorker, EncoderWorkerStats


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-encoder")
    source = build_tiny_text_encoder(root / "source", dim=32)
    export_text_encoder(root / "model", source=source)
    return root / "model"


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir: Path) -> EncoderSession:
    return EncoderSession(tiny_model_dir, variant="fp32")


def run_until(
    worker: EncoderWorker, done: Callable[[EncoderWorkerStats], bool], timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(worker.stats):
        assert time.monotonic() < deadline, worker.stats
        worker.run_once()


def test_items_become_embeddings_with_dim_and_version(
    fresh_broker: EmbeddedBroker, tiny_encoder: EncoderSession
) -> None:
    settings = fresh_broker.settings()
    own = np.arange(1, 33, dtype=np.float32)
    items = [
        Item(
            item_id=f"i{n}",
            text=f"item number {n} about recipes",
            category="food",
            tags=["t"],
            ts=n,
        )
        for n in range(40)
    ]
    wrong_dim = Item(item_id="wrong-dim", text="x", embedding=[1.0, 2.0], ts=99)
    broken = b'{"type":"item","v":1}'
    with Publisher(settings) as pub:
        pub.publish_many(items)
        pub.publish(Item(item_id="own", text="precomputed", embedding=own.tolist(), ts=99))
        pub.publish(wrong_dim)
        pub.send(ITEMS.name, broken, key=b"broken")
        pub.send(ITEMS.name, b"", key=b"empty")
        pub.send(ITEMS.name, None, key=b"null")
        pub.publish(ItemDeleted(item_id="i3", ts=100))

    worker = EncoderWorker(settings, tiny_encoder, max_batch=16)
    try:
        run_until(
            worker,
            lambda s: (
                s.embedded == 40
                and s.deleted == 1
                and s.dead_lettered == 1
                and worker._consumer.dead_letters.count == 4  # with the consumer's own
            ),
        )
    finally:
        worker.close()
    assert worker.stats.passed_through == 1

    latest: dict[str, ItemEmbedding | None] = {}
    for rec in read_topic(settings, ITEM_EMBEDDINGS.name, idle_timeout_s=1.0):
        assert rec.key is not None
        latest[rec.key.decode()] = (
            None if rec.value is None else decode_for_topic(ITEM_EMBEDDINGS.name, rec.value)
        )
    assert latest.pop("i3") is None  # deleted: a tombstone after its embedding
    assert "wrong-dim" not in latest and "broken" not in latest
    assert set(latest) == {f"i{n}" for n in range(40) if n != 3} | {"own"}
    expected = tiny_encoder.encode_items([it for it in items if it.item_id in latest])
    for item, vec in zip([it for it in items if it.item_id in latest], expected, strict=True):
        rec = latest[item.item_id]
        assert rec is not None
        assert rec.dim == tiny_encoder.dim == 32
        assert rec.encoder_version == tiny_encoder.version
        assert rec.source_ts == item.ts
        np.testing.assert_allclose(rec.array(), vec, atol=1e-5)
    own_rec = latest["own"]
    assert own_rec is not None and own_rec.encoder_version == "precomputed"
    np.testing.assert_allclose(own_rec.array(), own / np.linalg.norm(own), atol=1e-6)

    letters = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0)
    ]
    assert sorted((letter.reason, letter.original()) for letter in letters) == [
        ("embedding has dim 2, the index expects 32", wrong_dim.to_json()),
        ("empty message (null value)", b""),
        ("empty message (zero-length value)", b""),
        ("missing field 'item_id'", broken),  # original bytes kept
    ]
    assert {(x.key_b64, x.reason) for x in letters if x.reason.startswith("empty")} == {
        ("ZW1wdHk=", "empty message (zero-length value)"),
        ("bnVsbA==", "empty message (null value)"),
    }


def test_real_pretrained_encoder_through_the_worker(fresh_broker: EmbeddedBroker) -> None:
    from encoders.models import default_model_dir, ensure_exported

    model_dir = default_model_dir()
    ensure_exported(model_dir)
    session = EncoderSession(model_dir)
    settings = fresh_broker.settings()
    with Publisher(settings) as pub:
        pub.publish(Item(item_id="a", text="sourdough bread recipe", ts=1))
        pub.publish(Item(item_id="b", text="easy homemade bread baking", ts=1))
        pub.publish(Item(item_id="c", text="galaxy telescope stargazing", ts=1))
    worker = EncoderWorker(settings, session)
    try:
        run_until(worker, lambda s: s.embedded == 3)
    finally:
        worker.close()
    recs = {
        r.key.decode(): decode_for_topic(ITEM_EMBEDDINGS.name, r.value).array()
        for r in read_topic(settings, ITEM_EMBEDDINGS.name, idle_timeout_s=1.0)
        if r.key and r.value
    }
    assert recs["a"].shape == (384,)
    assert float(recs["a"] @ recs["b"]) > float(recs["a"] @ recs["c"]) + 0.2


class FailsOn:
    """The tiny encoder, except that it raises on any batch holding a text with ``word``."""

    def __init__(self, session: EncoderSession, word: str) -> None:
        self.session, self.word = session, word
        self.dim, self.version = session.dim, session.version

    def encode_items(self, items: list[Item]) -> np.ndarray:
        if any(self.word in it.text for it in items):
            raise ValueError(f"cannot encode {self.word!r}")
        return self.session.encode_items(items)


def test_an_item_the_encoder_fails_on_is_dead_lettered_alone_and_float16_travels(
    fresh_broker: EmbeddedBroker, tiny_encoder: EncoderSession
) -> None:
    settings = fresh_broker.settings()
    items = [Item(item_id=f"i{n}", text=f"item {n} garden tools", ts=n) for n in range(9)]
    items.insert(4, Item(item_id="bad", text="poison pill", ts=4))
    with Publisher(settings) as pub:
        pub.publish_many(items)

    worker = EncoderWorker(
        settings, FailsOn(tiny_encoder, "poison"), max_batch=16, vector_dtype="float16"
    )
    try:
        run_until(worker, lambda s: s.embedded == 9 and s.dead_lettered == 1)
        # Idle polls after a dead letter commit nothing.
        commits: list[float] = []
        commit = worker._consumer.commit

        def counting_commit() -> None:
            commits.append(time.monotonic())
            commit()

        worker._consumer.commit = counting_commit  # type: ignore[method-assign]
        for _ in range(3):
            assert worker.run_once() == 0
        assert commits == []
    finally:
        worker.close()
    recs = {
        r.key.decode(): decode_for_topic(ITEM_EMBEDDINGS.name, r.value)
        for r in read_topic(settings, ITEM_EMBEDDINGS.name, idle_timeout_s=1.0)
        if r.key and r.value
    }
    assert set(recs) == {f"i{n}" for n in range(9)}
    good = [it for it in items if it.item_id != "bad"]
    for item, vec in zip(good, tiny_encoder.encode_items(good), strict=True):
        rec = recs[item.item_id]
        assert rec.dtype == "float16" and rec.dim == 32
        np.testing.assert_allclose(rec.array(), vec, atol=2e-3)
    [letter] = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0)
    ]
    assert "encoder failed" in letter.reason and "poison" in letter.reason
    assert json.loads(letter.original())["item_id"] == "bad"


def test_a_broken_encoder_stops_the_worker_and_loses_no_item(
    fresh_broker: EmbeddedBroker, tiny_encoder: EncoderSession
) -> None:
    settings = fresh_broker.settings()
    items = [Item(item_id=f"i{n}", text=f"item {n} garden tools", ts=n) for n in range(5)]
    with Publisher(settings) as pub:
        pub.publish_many(items)
    broken = EncoderWorker(settings, FailsOn(tiny_encoder, "item"), max_batch=16)
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(RuntimeError, match="fails on every item"):
            while time.monotonic() < deadline:
                broken.run_once()
    finally:
        broken.close()
    # Nothing was committed or dead-lettered: a healthy worker embeds every item.
    assert not list(read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0))
    worker = EncoderWorker(settings, tiny_encoder, max_batch=16)
    try:
        run_until(worker, lambda s: s.embedded == 5)
    finally:
        worker.close()


def test_an_unknown_vector_dtype_is_refused(fresh_broker: EmbeddedBroker) -> None:
    with pytest.raises(ValueError, match="vector_dtype"):
        EncoderWorker(fresh_broker.settings(), None, vector_dtype="int8")  # type: ignore[arg-type]


def test_the_encoder_worker_command_stops_cleanly_on_sighup(
    fresh_broker: EmbeddedBroker, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``recstream worker encoder`` stops on every stop signal of ``streams.signals`` (SIGHUP: the
    terminal closed), after its batch, and exits 0."""
    settings = fresh_broker.settings()
    with Publisher(settings) as pub:
        pub.publish(Item(item_id="i0", text="garden tools", ts=1))
    log = tmp_path / "encoder.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "serving.cli", "worker", "encoder"),
                *("--model-dir", str(tiny_model_dir), "--variant", "fp32"),
                *("--bootstrap-servers", fresh_broker.bootstrap_servers),
            ],
            env={**os.environ, **EMBEDDED_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not list(read_topic(settings, ITEM_EMBEDDINGS.name, idle_timeout_s=0.5)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=15) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

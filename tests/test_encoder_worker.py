"""The encoder worker on the real broker: items in, item embeddings out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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


class FreezesTheBroker:
    """Encodes like ``inner``, but the first batch takes a while: the broker is stopped
    (SIGSTOP) meanwhile, past the group's session timeout."""

    def __init__(self, inner: EncoderSession, broker: EmbeddedBroker, seconds: float) -> None:
        self.inner, self.broker, self.seconds = inner, broker, seconds
        self.frozen = False

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def version(self) -> str:
        return self.inner.version

    def encode_items(self, items: Sequence[Any]) -> np.ndarray:
        if not self.frozen:
            self.frozen = True
            assert self.broker._proc is not None
            pid = self.broker._proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(self.seconds)
            finally:
                os.kill(pid, signal.SIGCONT)
        return self.inner.encode_items(items)


def test_a_worker_the_group_dropped_while_the_broker_was_frozen_goes_on_and_loses_no_item(
    fresh_broker: EmbeddedBroker, tiny_encoder: EncoderSession
) -> None:
    # Short group timeouts, so the freeze outlasts the session sooner.
    settings = replace(fresh_broker.settings(), session_timeout_ms=2000, rebalance_timeout_ms=2000)
    items = [Item(item_id=f"i{n}", text=f"item {n} kitchen knives", ts=n) for n in range(6)]
    with Publisher(settings) as pub:
        pub.publish_many(items)
    worker = EncoderWorker(settings, FreezesTheBroker(tiny_encoder, fresh_broker, 4.0))
    try:
        # The first batch is published, then its commit is refused (the group dropped the
        # worker during the freeze); the worker goes on, joins again and gets the batch again.
        run_until(worker, lambda s: s.commits_refused == 1 and s.embedded >= 2 * len(items))
    finally:
        worker.close()
    embedded = {
        rec.key.decode()
        for rec in read_topic(settings, ITEM_EMBEDDINGS.name, idle_timeout_s=1.0)
        if rec.key is not None and rec.value is not None
    }
    assert embedded == {it.item_id for it in items}
    # The second delivery was committed: a new worker of the group gets nothing more.
    again = EncoderWorker(settings, tiny_encoder)
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            again.run_once()
        assert again.stats.embedded == 0 and again.stats.commits_refused == 0
    finally:
        again.close()


def test_a_commit_the_frozen_broker_never_answers_is_not_fatal_and_the_next_one_covers_it(
    fresh_broker: EmbeddedBroker, tiny_encoder: EncoderSession
) -> None:
    settings = fresh_broker.settings()
    first = [Item(item_id=f"a{n}", text=f"item {n} garden hoses", ts=n) for n in range(4)]
    with Publisher(settings) as pub:
        pub.publish_many(first)
    worker = EncoderWorker(settings, tiny_encoder)
    consumer = worker._consumer
    real_commit = consumer.commit
    assert fresh_broker._proc is not None
    pid = fresh_broker._proc.pid

    def commit_while_frozen() -> None:
        # The broker stops answering just as the worker commits: the commit times out.
        consumer.commit = real_commit  # type: ignore[method-assign]
        os.kill(pid, signal.SIGSTOP)
        try:
            consumer.kafka.commit(timeout_ms=1000)
        finally:
            os.kill(pid, signal.SIGCONT)

    consumer.commit = commit_while_frozen  # type: ignore[method-assign]
    try:
        run_until(worker, lambda s: s.commits_refused == 1 and s.embedded == len(first))
        second = [Item(item_id=f"b{n}", text=f"item {n} rain boots", ts=n) for n in range(3)]
        with Publisher(settings) as pub:
            pub.publish_many(second)
        run_until(worker, lambda s: s.embedded == len(first) + len(second))
    finally:
        worker.close()
    assert worker.stats.commits_refused == 1
    # The second batch's commit covered the first: a new worker of the group gets nothing.
    again = EncoderWorker(settings, tiny_encoder)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            again.run_once()
        assert again.stats.embedded == 0
    finally:
        again.close()


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

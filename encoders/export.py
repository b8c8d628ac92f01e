"""Export a text encoder to ONNX (fp32 and int8) with a manifest, checked against torch.

``export_text_encoder(out_dir)`` turns the pretrained all-MiniLM-L6-v2 (or any BERT source dir,
e.g. a tiny test model) into a self-contained model directory (see ``encoders.manifest``):

- ``text_encoder.onnx``: (input_ids, attention_mask) int64 with dynamic batch and sequence axes
  -> ``embedding`` (batch, dim) float32, mean pooling and L2 norm inside the graph. Exported
  unfused with the TorchScript exporter; onnxruntime fuses attention/GELU/LayerNorm for whichever
  provider loads it.
- ``text_encoder.int8.onnx``: dynamic quantization, int8 weights per output channel, only the
  weight MatMuls (attention's activation x activation products stay fp32, which keeps the cosine
  to fp32 around 0.99 instead of 0.95 with per-tensor quantization of everything).
- ``tokenizer.json`` copied from the source, ``manifest.json`` last (its presence means complete).

Export is deterministic (same bytes for the same source) and checked: on a fixed sample of texts
the ONNX outputs must reach cosine >= 0.999 (fp32, every text) and >= 0.98 (int8, mean over the
sample; the minimum is recorded too) against the torch model, else ``ExportCheckFailed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from encoders.manifest import MANIFEST_FILE, TextManifest, sha256_file
from encoders.pretrained import MAX_LENGTH, MODEL_NAME, PIP_REQUIREMENT, pretrained_model_dir
from encoders.providers import CPU
from encoders.text import load_tokenizer, pad_batch
from encoders.text_model import TextEncoder, load_text_encoder

FP32_FILE = "text_encoder.onnx"
INT8_FILE = "text_encoder.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17
MIN_COSINE_FP32 = 0.999
MIN_COSINE_INT8 = 0.98

# Fixed parity sample: ordinary item texts plus the edge cases (empty, non-Latin, very long).
PARITY_TEXTS: tuple[str, ...] = (
    "Classic garlic pasta with oven roasted tomato sauce | cooking | dinner, easy",
    "Hiking the alpine ridge trail to the summit at sunrise",
    "Bebop saxophone quartet live recording on vinyl",
    "How to prune roses and mulch perennials before winter",
    "Telescope buying guide: aperture, mounts and eyepieces for galaxies",
    "20-minute strength workout: squats, lunges and a treadmill sprint",
    "Portrait photography with a 85mm lens at f/1.8",
    "Dovetail joinery for beginners, hand tools only",
    "Penalty shootout drama as the striker scores in the final minute",
    "Vintage denim jacket with silk scarf, autumn outfit ideas",
    "",
    "   ",
    "a",
    "東京タワーの夜景と横浜の中華街を巡る旅行ガイド",
    "Путеводитель по горным тропам Кавказа",
    "دليل المبتدئين لزراعة الطماطم في المنزل",
    "Café crème brûlée, naïve façade — résumé of a Zürich trip",
    "🔥🔥 best deal!!! 50% off sneakers @store #sale",
    "1234567890 0987654321",
    "sourdough " * 400,
    " ".join(f"word{i}" for i in range(600)),
    "Espresso, latte, cappuccino: a barista's guide to milk texture",
    "Knitting a wool cardigan: stitch patterns and yarn weights",
    "Chess opening traps: the queen's gambit declined explained",
)

log = logging.getLogger(__name__)


class ExportCheckFailed(RuntimeError):
    """The exported graph does not reproduce the torch model closely enough."""


def default_name(source: Path) -> str:
    """A short model name from a source dir (the pretrained package's is ``minilm-l6-v2``)."""
    try:
        if source.resolve() == pretrained_model_dir().resolve():
            return MODEL_NAME
    except FileNotFoundError:
        pass
    stem = re.sub(r"[^a-z0-9]+", "-", source.resolve().name.lower()).strip("-")
    return stem or "text-encoder"


def model_version(name: str, source: Path, max_length: int) -> str:
    """``name@hash8``: the hash covers weights, tokenizer and max length (what fixes outputs)."""
    digest = hashlib.sha256()
    for part in (
        sha256_file(source / "model.safetensors"),
        sha256_file(source / TOKENIZER_FILE),
        f"max_length={max_length};pooling=mean;norm=l2",
    ):
        digest.update(part.encode())
    return f"{name}@{digest.hexdigest()[:8]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tracer warnings and onnxruntime.quantization's advice printed via logging."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(model: TextEncoder, path: Path) -> Path:
    """Trace ``model`` to ONNX with dynamic batch and sequence axes (deterministic bytes)."""
    # Any valid ids will do for tracing; a padded row makes sure the mask path is exercised.
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], dtype=torch.int64)
    ids = ids.clamp(max=model.config.vocab_size - 1)
    mask = (ids != 0).to(torch.int64)
    mask[:, 0] = 1
    axes = {0: "batch", 1: "sequence"}
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization: per-channel int8 weights, weight MatMuls (and Gather) only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"MatMulConstBOnly": True},
        )
    return dst


def _cpu_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[CPU])


def parity(
    model: TextEncoder, onnx_path: Path, tokenizer_path: Path, max_length: int
) -> np.ndarray:
    """Per-text cosine between the torch model and the ONNX graph on ``PARITY_TEXTS``."""
    tok = load_tokenizer(tokenizer_path, max_length)
    feeds = pad_batch(tok.encode_batch(list(PARITY_TEXTS)))
    with torch.no_grad():
        expected = model(
            torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        ).numpy()
    got = _cpu_session(onnx_path).run(None, feeds)[0]
    return np.asarray((expected * got).sum(axis=1), dtype=np.float64)


def export_text_encoder(
    out_dir: Path,
    *,
    source: Path | None = None,
    max_length: int = MAX_LENGTH,
    quantize: bool = True,
) -> TextManifest:
    """Export ``source`` (default: the pretrained package's model dir) into ``out_dir``.

    ``max_length`` (default 256, what all-MiniLM-L6-v2 was trained with) caps tokens per text;
    batches are padded only to their longest text, so short texts do not pay for it. Files are
    written to a temporary dir, checked, then moved in; ``manifest.json`` is written last.
    """
    source = Path(source) if source is not None else pretrained_model_dir()
    out_dir = Path(out_dir)
    model = load_text_encoder(source)
    max_length = min(max_length, model.config.max_position_embeddings)
    name = default_name(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"fp32": FP32_FILE} | ({"int8": INT8_FILE} if quantize else {})
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp_name:
        tmp = Path(tmp_name)
        shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        export_onnx(model, tmp / FP32_FILE)
        if quantize:
            quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE)
        checks: dict[str, float] = {}
        for variant, file in files.items():
            cos = parity(model, tmp / file, tmp / TOKENIZER_FILE, max_length)
            checks[f"{variant}_cosine_mean"] = round(float(cos.mean()), 6)
            checks[f"{variant}_cosine_min"] = round(float(cos.min()), 6)
        checks["n_texts"] = len(PARITY_TEXTS)
        if checks["fp32_cosine_min"] < MIN_COSINE_FP32:
            raise ExportCheckFailed(
                f"fp32 ONNX vs torch cosine {checks['fp32_cosine_min']:.5f} < {MIN_COSINE_FP32}"
            )
        if quantize and checks["int8_cosine_mean"] < MIN_COSINE_INT8:
            raise ExportCheckFailed(
                f"int8 ONNX vs torch mean cosine {checks['int8_cosine_mean']:.5f} "
                f"< {MIN_COSINE_INT8}"
            )
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten
        for stale in (FP32_FILE, INT8_FILE):
            (out_dir / stale).unlink(missing_ok=True)
        names = [*files.values(), TOKENIZER_FILE]
        for file in names:
            (tmp / file).replace(out_dir / file)
    manifest = TextManifest(
        name=name,
        version=model_version(name, source, max_length),
        dim=model.dim,
        max_length=max_length,
        files=files,
        sha256={file: sha256_file(out_dir / file) for file in names},
        tokenizer=TOKENIZER_FILE,
        parity=checks,
        created_by=(
            f"recstream encoders.export (torch {torch.__version__}, opset {OPSET}, "
            f"onnxruntime {ort.__version__})"
        ),
        source=PIP_REQUIREMENT if name == MODEL_NAME else str(source),
    )
    manifest.write(out_dir)
    log.info("exported %s to %s (parity %s)", manifest.version, out_dir, checks)
    return manifest

"""Inference with exported encoders: onnxruntime + ``tokenizers`` only (never torch).

``EncoderSession(model_dir)`` loads a model directory written by ``encoders.export`` (and, when
the directory holds a trained head, composes it after the text encoder), then embeds batches:

    session = EncoderSession(default_model_dir())
    vectors = session.encode_items(items)   # (n, dim) float32, rows L2-normalized
    session.version                          # "minilm-l6-v2@3571fc3d" (+ "+head@...")

Batches are sorted by token length and cut into chunks of ``max_batch`` so padding stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from encoders.manifest import HEAD_MANIFEST_FILE, HeadManifest, TextManifest
from encoders.models import default_model_dir, ensure_exported
from encoders.providers import CUDA, choose_providers, physical_cores, quiet_onnxruntime
from encoders.text import category_ids, item_fields, item_text, load_tokenizer, pad_batch, tag_ids

Variant = Literal["auto", "fp32", "int8"]
log = logging.getLogger(__name__)


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1  # one graph at a time; parallelism is inside the ops
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def _open(path: Path, providers: list[str], opts: ort.SessionOptions) -> ort.InferenceSession:
    if CUDA not in providers:
        return ort.InferenceSession(str(path), opts, providers=providers)
    # A GPU is present, but the CUDA provider may still fail to load (missing cuBLAS/cuDNN):
    # onnxruntime then logs an error per session and falls back; say it once, in one line.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    finally:
        ort.set_default_logger_severity(3)
    if session.get_providers()[0] != CUDA:
        log.warning("a CUDA device is present but onnxruntime could not use it; running on CPU")
    return session


class EncoderSession:
    """Embeds texts with an exported text encoder (and its head, if the directory has one).

    - ``variant``: "auto" (default) runs int8 on CPU (about 1.5-2x faster than fp32 there, cosine
      to fp32 about 0.99) and fp32 on CUDA (dynamic int8 kernels are CPU kernels); "fp32" and
      "int8" force one. Both variants share one ``version``: they embed into the same space.
    - ``max_batch``: texts per model call; larger batches are cut into chunks.
    - ``providers``: onnxruntime providers; default ``choose_providers()`` (CUDA only when a
      device really exists, else CPU).
    - ``intra_op_threads``: default the physical cores this process may use.
    - ``use_head``: compose the trained head when ``head.json`` is present (default True).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        variant: Variant | str = "auto",
        max_batch: int = 64,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        use_head: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model_dir = Path(model_dir)
        self.manifest = TextManifest.load(self.model_dir)
        quiet_onnxruntime()
        chosen = list(providers) if providers is not None else choose_providers()
        if variant not in ("auto", "fp32", "int8"):
            raise ValueError(f"variant must be 'auto', 'fp32' or 'int8', not {variant!r}")
        if variant == "auto":
            on_gpu = chosen[0] == CUDA
            variant = "int8" if not on_gpu and "int8" in self.manifest.files else "fp32"
        if variant not in self.manifest.files:
            raise ValueError(
                f"{self.model_dir} has no {variant!r} variant (has {sorted(self.manifest.files)})"
            )
        self.variant: str = variant
        self.max_batch = max_batch
        self.intra_op_threads = intra_op_threads or physical_cores()
        opts = _session_options(self.intra_op_threads)
        self._tokenizer = load_tokenizer(
            self.model_dir / self.manifest.tokenizer, self.manifest.max_length
        )
        self._encoder = _open(self.model_dir / self.manifest.files[variant], chosen, opts)
        self.provider: str = self._encoder.get_providers()[0]
        self.head: HeadManifest | None = None
        self._head: ort.InferenceSession | None = None
        if use_head and (self.model_dir / HEAD_MANIFEST_FILE).is_file():
            head = HeadManifest.load(self.model_dir)
            if head.base_version != self.manifest.version:
                raise ValueError(
                    f"{self.model_dir}: head {head.version} was trained on {head.base_version}, "
                    f"but the text encoder here is {self.manifest.version}"
                )
            self.head = head
            self._head = _open(self.model_dir / head.file, chosen, opts)

    @property
    def dim(self) -> int:
        return self.head.dim if self.head is not None else self.manifest.dim

    @property
    def tokenizer(self) -> Tokenizer:
        """The WordPiece tokenizer (truncating to the manifest's max length, no padding)."""
        return self._tokenizer

    @property
    def version(self) -> str:
        """Recorded with every embedding: ``base@hash`` or ``base@hash+head@hash``."""
        if self.head is not None:
            return f"{self.manifest.version}+{self.head.version}"
        return self.manifest.version

    def __repr__(self) -> str:
        return (
            f"EncoderSession({self.version!r}, variant={self.variant!r}, dim={self.dim}, "
            f"provider={self.provider!r}, threads={self.intra_op_threads})"
        )

    def run_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The text encoder on one pre-tokenized, padded int64 batch: (batch, base dim)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return np.asarray(self._encoder.run(None, feeds)[0])

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Base text-encoder embeddings (no head): (n, base dim) float32, L2-normalized."""
        n = len(texts)
        out = np.empty((n, self.manifest.dim), dtype=np.float32)
        if n == 0:
            return out
        encodings = self._tokenizer.encode_batch([t or "" for t in texts])
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        for start in range(0, n, self.max_batch):
            rows = order[start : start + self.max_batch]
            feeds = pad_batch([encodings[i] for i in rows])
            out[rows] = self._encoder.run(None, feeds)[0]
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        categories: Sequence[str | None] | None = None,
        tags: Sequence[Iterable[str]] | None = None,
    ) -> np.ndarray:
        """(n, dim) float32 L2-normalized embeddings of ``texts``.

        ``categories``/``tags`` feed the head (when there is one); the texts are embedded as
        given, so pass ``item_text(...)`` strings, or use ``encode_items``, which does both.
        """
        vectors = self.encode_text(texts)
        if self._head is None or self.head is None or len(texts) == 0:
            return vectors
        n = len(texts)
        cats = category_ids(categories or [None] * n, self.head.category_buckets)
        tag_rows = tag_ids(tags or [()] * n, self.head.tag_buckets, self.head.max_tags)
        out = np.empty((n, self.head.dim), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            sl = slice(start, start + self.max_batch)
            feeds = {"embedding": vectors[sl], "category_ids": cats[sl], "tag_ids": tag_rows[sl]}
            out[sl] = self._head.run(None, feeds)[0]
        return out

    def encode_items(self, items: Sequence[Any]) -> np.ndarray:
        """Embed items (mappings or objects with ``text``, ``category``, ``tags``)."""
        fields = [item_fields(item) for item in items]
        return self.encode(
            [item_text(*f) for f in fields],
            categories=[f[1] for f in fields],
            tags=[f[2] for f in fields],
        )


__all__ = [
    "EncoderSession",
    "Variant",
    "default_model_dir",
    "ensure_exported",
]

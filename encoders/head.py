"""A trainable head over the text embedding, fit to co-engagement (torch; export to ONNX).

``ItemHead`` maps (text embedding, hashed category id, hashed tag ids) to an adapted,
L2-normalized embedding of the same dimension: ``normalize(e + MLP([e, cat, mean(tags)]))``. The
MLP's last layer starts at zero, so an untrained head is the identity and training starts from
the base encoder's quality. It is trained with a symmetric in-batch-negatives InfoNCE loss on
co-engagement pairs (``encoders.coengagement``), exported as ``head.onnx`` next to a copy of
the base encoder, and ``EncoderSession`` composes the two.

``train_head(items.jsonl, engagements.jsonl, out_dir)`` does all of it and reports next-item
recall@k on a held-out time split before (base encoder) and after (with the head).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from encoders.coengagement import (
    DAY_MS,
    coengagement_pairs,
    next_item_queries,
    recall_at_k,
    split_time,
)
from encoders.manifest import HEAD_MANIFEST_FILE, MANIFEST_FILE, HeadManifest, TextManifest
from encoders.providers import CPU
from encoders.records import read_engagements, read_items
from encoders.session import EncoderSession
from encoders.text import MAX_TAGS, category_ids, item_text, tag_ids

HEAD_FILE = "head.onnx"
log = logging.getLogger(__name__)


class ItemHead(nn.Module):
    """Residual MLP over the text embedding plus category and tag embeddings (hashed buckets)."""

    def __init__(
        self,
        dim: int,
        *,
        category_buckets: int = 1024,
        tag_buckets: int = 4096,
        side_dim: int = 32,
        hidden: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.category_buckets = category_buckets
        self.tag_buckets = tag_buckets
        self.category = nn.Embedding(category_buckets, side_dim, padding_idx=0)
        self.tags = nn.Embedding(tag_buckets, side_dim, padding_idx=0)
        self.hidden = nn.Linear(dim + 2 * side_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)  # identity at start: training begins at the base quality
        nn.init.zeros_(self.out.bias)

    def forward(
        self, embedding: torch.Tensor, category_ids: torch.Tensor, tag_ids: torch.Tensor
    ) -> torch.Tensor:
        present = (tag_ids > 0).to(embedding.dtype).unsqueeze(-1)
        tags = (self.tags(tag_ids) * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
        side = torch.cat([embedding, self.category(category_ids), tags], dim=1)
        delta = self.out(self.dropout(F.gelu(self.hidden(side))))
        return F.normalize(embedding + delta, p=2.0, dim=1)


def info_nce(
    za: torch.Tensor,
    zb: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; the same item elsewhere is not a negative.

    ``log_q`` (log of each item's share of pair endpoints) applies the sampling-bias correction
    of Yi et al. 2019: in-batch negatives are drawn by popularity, and without the correction
    the loss learns to discount popular items, which next-item retrieval needs.
    """
    logits = za @ zb.T / temperature
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=za.device)
    # Row i scores a_i against every b_j: b_j equal to b_i or to a_i is a false negative.
    false_ab = ((b[None, :] == b[:, None]) | (b[None, :] == a[:, None])) & ~eye
    false_ba = ((a[None, :] == a[:, None]) | (a[None, :] == b[:, None])) & ~eye
    labels = torch.arange(a.shape[0], device=za.device)
    logits_ab, logits_ba = logits, logits.T
    if log_q is not None:
        logits_ab = logits_ab - log_q[b][None, :]
        logits_ba = logits_ba - log_q[a][None, :]
    loss_ab = F.cross_entropy(logits_ab.masked_fill(false_ab, float("-inf")), labels)
    loss_ba = F.cross_entropy(logits_ba.masked_fill(false_ba, float("-inf")), labels)
    return (loss_ab + loss_ba) / 2


@dataclass(frozen=True)
class HeadConfig:
    """Training settings (defaults suit catalogues of thousands to ~100k items on a CPU)."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    logq_correction: bool = True
    hidden: int = 512
    side_dim: int = 32
    dropout: float = 0.1
    category_buckets: int = 1024
    tag_buckets: int = 4096
    window: int = 3  # pair each engagement with the user's next `window` engagements ...
    max_gap_ms: int = DAY_MS  # ... that follow within this time
    test_fraction: float = 0.2  # the latest engagements, held out for recall
    k: int = 10
    max_eval_queries: int = 5000
    seed: int = 0
    # The head is small: one torch thread beats several (their sync costs more than the math,
    # badly so on a shared CPU); raise it for very large batches or hidden sizes.
    torch_threads: int = 1


@dataclass(frozen=True)
class HeadReport:
    """What training did: recall@k of the base encoder and of the head on the held-out split."""

    recall_before: float
    recall_after: float
    k: int
    items: int
    engagements: int
    train_pairs: int
    test_queries: int
    epochs: int
    final_loss: float
    seconds: float
    base_version: str
    head_version: str
    out_dir: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fit_head(
    embeddings: np.ndarray,
    categories: np.ndarray,
    tags: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray],
    cfg: HeadConfig,
) -> tuple[ItemHead, list[float]]:
    """Train an ``ItemHead`` on positive pairs of item rows; returns it (eval mode) and losses."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    cat, tag = torch.from_numpy(categories), torch.from_numpy(tags)
    a_all, b_all = (torch.from_numpy(p.astype(np.int64)) for p in pairs)
    counts = np.bincount(np.concatenate(pairs), minlength=emb.shape[0]).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
    head = ItemHead(
        emb.shape[1],
        category_buckets=cfg.category_buckets,
        tag_buckets=cfg.tag_buckets,
        side_dim=cfg.side_dim,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = a_all.shape[0]
    steps = max(1, cfg.epochs * -(-n // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    losses: list[float] = []
    head.train()
    for _ in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if idx.shape[0] < 2:
                continue
            a, b = a_all[idx], b_all[idx]
            za = head(emb[a], cat[a], tag[a])
            zb = head(emb[b], cat[b], tag[b])
            loss = info_nce(za, zb, a, b, cfg.temperature, log_q if cfg.logq_correction else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.shape[0]
        losses.append(total / max(n, 1))
    return head.eval(), losses


def apply_head(
    head: ItemHead, embeddings: np.ndarray, categories: np.ndarray, tags: np.ndarray
) -> np.ndarray:
    with torch.no_grad():
        out = head(
            torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)),
            torch.from_numpy(categories),
            torch.from_numpy(tags),
        )
    return np.asarray(out.numpy(), dtype=np.float32)


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_head(head: ItemHead, path: Path) -> Path:
    """``head.onnx``: (embedding, category_ids, tag_ids) -> embedding, dynamic batch axis."""
    dummy = (
        F.normalize(torch.ones(2, head.dim), dim=1),
        torch.tensor([1, 0], dtype=torch.int64),
        torch.tensor([[1, 2] + [0] * (MAX_TAGS - 2), [0] * MAX_TAGS], dtype=torch.int64),
    )
    batch = {0: "batch"}
    with _no_warnings(), torch.no_grad():
        torch.onnx.export(
            head.eval(),
            dummy,
            str(path),
            input_names=["embedding", "category_ids", "tag_ids"],
            output_names=["embedding_out"],
            dynamic_axes={
                "embedding": batch,
                "category_ids": batch,
                "tag_ids": {0: "batch", 1: "tags"},
                "embedding_out": batch,
            },
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def _head_parity(
    head: ItemHead, path: Path, embeddings: np.ndarray, cats: np.ndarray, tags: np.ndarray
) -> float:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=[CPU])
    got = sess.run(None, {"embedding": embeddings, "category_ids": cats, "tag_ids": tags})[0]
    expected = apply_head(head, embeddings, cats, tags)
    return float((got * expected).sum(axis=1).min())


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def train_head(
    items_path: Path,
    engagements_path: Path,
    out_dir: Path,
    *,
    base_model_dir: Path | None = None,
    epochs: int | None = None,
) -> HeadReport:
    """Train a head on a recorded log and write a composed model dir to ``out_dir``.

    ``out_dir`` gets the base encoder's files (hard links when possible) plus ``head.onnx`` and
    ``head.json``, so ``EncoderSession(out_dir)`` runs text encoder then head. ``base_model_dir``
    defaults to ``default_model_dir()`` (exported on first use); ``epochs`` overrides
    ``HeadConfig``'s.
    """
    start = time.perf_counter()
    cfg = HeadConfig() if epochs is None else HeadConfig(epochs=epochs)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _train_head(items_path, engagements_path, out_dir, base_model_dir, cfg, start)
    finally:
        torch.set_num_threads(previous_threads)


def _train_head(
    items_path: Path,
    engagements_path: Path,
    out_dir: Path,
    base_model_dir: Path | None,
    cfg: HeadConfig,
    start: float,
) -> HeadReport:
    from encoders.models import default_model_dir, ensure_exported

    base_dir = Path(base_model_dir) if base_model_dir is not None else default_model_dir()
    if base_model_dir is None:
        ensure_exported(base_dir)
    base = TextManifest.load(base_dir)
    items = read_items(Path(items_path))
    eng = read_engagements(Path(engagements_path), items)
    if len(items) < 2 or len(eng) < 2:
        raise ValueError(
            f"need items and engagements to train on: {len(items)} items, {len(eng)} "
            f"engagements with known items ({eng.unknown_items} with unknown items)"
        )
    session = EncoderSession(base_dir, use_head=False)
    texts = [
        item_text(t, c, g)
        for t, c, g in zip(items.texts, items.categories, items.tags, strict=False)
    ]
    base_emb = session.encode_text(texts)
    cats = category_ids(items.categories, cfg.category_buckets)
    tags = tag_ids(items.tags, cfg.tag_buckets, MAX_TAGS)

    split_ts = split_time(eng, cfg.test_fraction)
    pairs = coengagement_pairs(
        eng, window=cfg.window, max_gap_ms=cfg.max_gap_ms, before_ts=split_ts
    )
    if pairs[0].shape[0] < 2:
        raise ValueError(
            "fewer than 2 co-engagement pairs before the held-out split: nothing to learn from "
            f"(window={cfg.window}, max_gap_ms={cfg.max_gap_ms})"
        )
    queries, targets = next_item_queries(eng, split_ts, max_queries=cfg.max_eval_queries)
    recall_before = recall_at_k(base_emb, queries, targets, cfg.k)
    log.info("training the head on %d pairs (%d items)", pairs[0].shape[0], len(items))
    head, losses = fit_head(base_emb, cats, tags, pairs, cfg)
    recall_after = recall_at_k(apply_head(head, base_emb, cats, tags), queries, targets, cfg.k)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != base_dir.resolve():
        for name in [*base.sha256, MANIFEST_FILE]:
            _link_or_copy(base_dir / name, out_dir / name)
    (out_dir / HEAD_MANIFEST_FILE).unlink(missing_ok=True)
    head_path = export_head(head, out_dir / HEAD_FILE)
    sample = slice(0, min(len(items), 256))
    cos = _head_parity(head, head_path, base_emb[sample], cats[sample], tags[sample])
    if cos < 0.999:
        raise RuntimeError(f"head ONNX vs torch cosine {cos:.5f} < 0.999")
    digest = hashlib.sha256(head_path.read_bytes()).hexdigest()
    report = HeadReport(
        recall_before=round(recall_before, 4),
        recall_after=round(recall_after, 4),
        k=cfg.k,
        items=len(items),
        engagements=len(eng),
        train_pairs=int(pairs[0].shape[0]),
        test_queries=int(queries.shape[0]),
        epochs=cfg.epochs,
        final_loss=round(losses[-1], 4) if losses else float("nan"),
        seconds=round(time.perf_counter() - start, 2),
        base_version=base.version,
        head_version=f"head@{digest[:8]}",
        out_dir=str(out_dir),
    )
    HeadManifest(
        version=report.head_version,
        base_version=base.version,
        dim=head.dim,
        category_buckets=cfg.category_buckets,
        tag_buckets=cfg.tag_buckets,
        max_tags=MAX_TAGS,
        file=HEAD_FILE,
        sha256=digest,
        metrics={
            f"recall_at_{cfg.k}_before": report.recall_before,
            f"recall_at_{cfg.k}_after": report.recall_after,
            "onnx_cosine_min": round(cos, 6),
            "test_queries": report.test_queries,
            "train_pairs": report.train_pairs,
        },
        config={**dataclasses.asdict(cfg), "base_variant": session.variant},
        created_by=f"recstream encoders.head (torch {torch.__version__}, opset 17)",
    ).write(out_dir)
    log.info(
        "head %s: recall@%d %.4f -> %.4f", report.head_version, cfg.k, recall_before, recall_after
    )
    return report

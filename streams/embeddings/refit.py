"""Item vectors from co-engagement statistics: truncated SVD of a shifted PPMI matrix (pure).

``ItemEmbedding.fit`` turns a ``CoOccurrence`` snapshot into one unit vector per item:

1. PPMI with context-distribution smoothing (Levy, Goldberg and Dagan, TACL 2015):
   ``pmi[a, b] = log(C[a, b] * sum(r ** alpha) / (r[a] * r[b] ** alpha))`` with ``r`` the row
   sums of ``C``; smoothing the context side (``alpha`` < 1) stops rare items from owning the
   largest associations. Entries are shifted by ``log(shift)`` and clipped at 0 (sparse).
2. Truncated SVD ``U S V^T`` of rank ``rank`` (``scipy.sparse.linalg.svds``; a dense SVD for a
   catalogue too small for ARPACK). An item's vector is its row of ``U S ** eig_power``,
   normalized to unit length (every reader searches by cosine).

Items whose PPMI row is empty (never co-engaged, or only with what the shift removes) get no
vector: ``item_vectors`` leaves them out, as the interests engine's lookup expects of unknown
items. Verbs: ``fit``, ``item_vectors``, ``similar_items``, ``save`` / ``load`` (npz).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from streams.embeddings.coengagement import CoOccurrence
from streams.embeddings.config import RefitConfig


def ppmi(matrix: sp.spmatrix, *, shift: float = 1.0, alpha: float = 0.75) -> sp.csr_matrix:
    """The shifted, smoothed positive PMI of a non-negative co-occurrence matrix (CSR)."""
    c = sp.csr_matrix(matrix, dtype=np.float64)
    c.eliminate_zeros()
    rows = np.asarray(c.sum(axis=1)).ravel()
    if c.nnz == 0:
        return c
    context = rows**alpha
    norm = context.sum()
    r, k = c.nonzero()
    with np.errstate(divide="ignore"):
        values = np.log(c.data * norm / (rows[r] * context[k])) - math.log(shift)
    keep = values > 0
    return sp.csr_matrix((values[keep], (r[keep], k[keep])), shape=c.shape)


class ItemEmbedding:
    """Collaborative item vectors, refit from co-engagement statistics."""

    def __init__(self, config: RefitConfig | None = None) -> None:
        self.config = config or RefitConfig()
        self.item_ids: list[str] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.as_of_ts = 0
        self.events = 0
        self._row: dict[str, int] = {}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def fit(self, stats: CoOccurrence) -> ItemEmbedding:
        """Replace the vectors with a fit to ``stats``; returns self."""
        m = ppmi(stats.matrix, shift=self.config.shift, alpha=self.config.alpha)
        has = np.diff(m.indptr) > 0
        kept = np.flatnonzero(has)
        sub = m[kept][:, kept]
        rank = min(self.config.rank, max(len(kept) - 1, 1))
        if len(kept) == 0:
            u, s = np.zeros((0, rank)), np.zeros(rank)
        elif len(kept) <= 2 * rank + 1 or rank >= len(kept) - 1:
            # ARPACK needs rank < n - 1 and works poorly near it: small catalogues go dense.
            u_all, s_all, _ = np.linalg.svd(sub.toarray())
            u, s = u_all[:, :rank], s_all[:rank]
        else:
            v0 = np.random.default_rng(self.config.seed).standard_normal(len(kept))
            u, s, _ = svds(sub, k=rank, v0=v0)
            order = np.argsort(-s)
            u, s = u[:, order], s[order]
            # Singular vectors are defined up to sign: fix it so equal inputs give equal vectors.
            u *= np.where(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] < 0, -1.0, 1.0)
        x = u * s**self.config.eig_power
        norms = np.linalg.norm(x, axis=1)
        ok = norms > 0
        self.item_ids = [stats.item_ids[i] for i in kept[ok]]
        self.vectors = (x[ok] / norms[ok, None]).astype(np.float32)
        self._row = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.as_of_ts, self.events = stats.as_of_ts, stats.events
        return self

    def item_vectors(self, item_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(the ids that have a vector, their unit vectors): the interests engine's lookup."""
        found = [i for i in item_ids if i in self._row]
        return found, self.vectors[[self._row[i] for i in found]].reshape(len(found), self.dim)

    def aligned(self, item_ids: Sequence[str]) -> np.ndarray:
        """One row per id in ``item_ids``: its vector, or zeros for an item without one."""
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        rows = [(i, self._row[item_id]) for i, item_id in enumerate(item_ids) if item_id in self]
        if rows:
            at, src = zip(*rows, strict=True)
            out[list(at)] = self.vectors[list(src)]
        return out

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items nearest ``item_id`` by cosine, best first (itself excluded); [] for
        an item without a vector."""
        row = self._row.get(item_id)
        if row is None:
            return []
        scores = self.vectors @ self.vectors[row]
        scores[row] = -np.inf
        k = min(k, len(scores) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(self.item_ids[i], float(scores[i])) for i in top]

    def save(self, path: Path | str) -> None:
        """Write the vectors, ids and fit metadata as one ``.npz``."""
        meta = {"config": asdict(self.config), "as_of_ts": self.as_of_ts, "events": self.events}
        with open(path, "wb") as f:
            np.savez(
                f,
                ids=np.array(self.item_ids, dtype=np.str_),
                vectors=self.vectors,
                meta=np.array(json.dumps(meta)),
            )

    @classmethod
    def load(cls, path: Path | str) -> ItemEmbedding:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            emb = cls(RefitConfig(**meta["config"]))
            emb.item_ids = [str(i) for i in z["ids"]]
            emb.vectors = np.asarray(z["vectors"], dtype=np.float32)
        emb._row = {item_id: i for i, item_id in enumerate(emb.item_ids)}
        emb.as_of_ts, emb.events = int(meta["as_of_ts"]), int(meta["events"])
        return emb

"""The byte format of an interests state (``InterestClusters.to_bytes``), version 1.

Little-endian, in this order:

- the header (``STATE_HEADER``): magic (``RSIC``: a full state, ``RSIV``: a view), format
  version, dim, actions n, clusters k, events applied, newest ts, whether a last event id is
  set, and the byte lengths of the last event id, the item ids and the event ids;
- the last event id, the item ids (arrival order) and the remembered event ids, UTF-8, the ids
  joined by newlines;
- per action, in arrival order: ts (int64) x n, weight (float32) x n, cluster (uint16) x n;
- per cluster: member count (uint32) x k, then the member sums (float32, k x dim).

A view leaves out the event ids and the cluster sums (what readers do not need). Member
embeddings are never stored: they live once per item in the item store.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

FORMAT_VERSION = 1
MAGIC = b"RSIC"
# A view: the same layout without cluster sums and remembered event ids (what readers need).
VIEW_MAGIC = b"RSIV"
# magic, version, dim, actions, clusters, applied, newest ts, has-last, byte lengths of the
# last event id, item ids and event ids. The last event id follows the header.
STATE_HEADER = "<4sBHIHQqBIII"


class StateFormatError(ValueError):
    """Serialized interests that this version cannot read (corrupt or unknown version)."""


class DecodedState(NamedTuple):
    """A state's fields as ``decode`` reads them, checked consistent with each other."""

    view: bool
    dim: int
    applied: int
    max_ts: int
    last_event_id: str | None
    item_ids: list[str]
    event_ids: list[str]
    ts: np.ndarray
    weights: np.ndarray
    clusters: np.ndarray
    counts: np.ndarray
    sums: np.ndarray | None  # None in a view


def encode_item_ids(item_ids: list[str]) -> bytes:
    """The item ids part of a state (arrival order)."""
    return "\n".join(item_ids).encode()


def encode_actions(
    ts: np.ndarray, weights: np.ndarray, clusters: np.ndarray, counts: np.ndarray
) -> bytes:
    """The actions' times, weights and clusters (arrival order) and the cluster counts: a
    state and its view share them."""
    return b"".join(
        (
            ts.astype("<i8", copy=False).tobytes(),
            weights.astype("<f4", copy=False).tobytes(),
            clusters.astype("<u2").tobytes(),
            counts.astype("<u4").tobytes(),
        )
    )


def encode(
    *,
    view: bool,
    dim: int,
    n_actions: int,
    n_clusters: int,
    applied: int,
    max_ts: int,
    last_event_id: str | None,
    item_ids: bytes,
    event_ids: Iterable[str],
    actions: bytes,
    sums: np.ndarray,
) -> bytes:
    """A state's bytes; ``item_ids`` and ``actions`` as ``encode_item_ids`` and
    ``encode_actions`` make them (the caller caches them)."""
    events = b"" if view else "\n".join(event_ids).encode()
    last = (last_event_id or "").encode()
    head = struct.pack(
        STATE_HEADER,
        VIEW_MAGIC if view else MAGIC,
        FORMAT_VERSION,
        dim,
        n_actions,
        n_clusters,
        applied,
        max_ts,
        1 if last_event_id is not None else 0,
        len(last),
        len(item_ids),
        len(events),
    )
    if view:
        return b"".join((head, last, item_ids, events, actions))
    # copy=False: the native little-endian arrays are written as they are, not copied first.
    return b"".join(
        (head, last, item_ids, events, actions, sums.astype("<f4", copy=False).tobytes())
    )


def items_in(blob: bytes) -> frozenset[str]:
    """The item ids a state (or view) holds, without decoding the rest (cheap).

    Raises ``StateFormatError`` on a blob that is not a state of this format version.
    """
    _check_magic_and_version(blob)
    size = struct.calcsize(STATE_HEADER)
    if len(blob) < size:
        raise StateFormatError("interests state is truncated")
    fields = struct.unpack_from(STATE_HEADER, blob)
    n, n_last, n_items = fields[3], fields[8], fields[9]
    start = size + n_last
    if len(blob) < start + n_items:
        raise StateFormatError("interests state is truncated")
    return frozenset(blob[start : start + n_items].decode().split("\n")) if n else frozenset()


def decode(blob: bytes) -> DecodedState:
    """The fields of a state (or view) made by ``encode``.

    Raises ``StateFormatError`` on a blob that is not a state of this format version, or
    whose assignments do not match its cluster counts.
    """
    fmt = STATE_HEADER
    size = struct.calcsize(fmt)
    view = _check_magic_and_version(blob)
    if len(blob) < size:
        raise StateFormatError("interests state is truncated")
    _, _, dim, n, k, applied, max_ts, has_last, n_last, n_items, n_events = struct.unpack_from(
        fmt, blob
    )
    sum_bytes = 0 if view else 4 * dim
    expected = size + n_last + n_items + n_events + n * (8 + 4 + 2) + k * (4 + sum_bytes)
    if len(blob) != expected:
        raise StateFormatError(f"interests state has {len(blob)} bytes, expected {expected}")
    off = size

    def take(nbytes: int) -> bytes:
        nonlocal off
        chunk = blob[off : off + nbytes]
        off += nbytes
        return chunk

    last = take(n_last).decode()
    items = take(n_items).decode().split("\n") if n else []
    events_raw = take(n_events).decode()
    ts = np.frombuffer(take(8 * n), dtype="<i8").astype(np.int64)
    w = np.frombuffer(take(4 * n), dtype="<f4").astype(np.float32)
    cl = np.frombuffer(take(2 * n), dtype="<u2").astype(np.int32)
    counts = np.frombuffer(take(4 * k), dtype="<u4").astype(np.int64)
    sums = None
    if not view:
        sums = np.frombuffer(take(4 * k * dim), dtype="<f4").reshape(k, dim).astype(np.float32)
    pairs = dict(zip(items, cl.tolist(), strict=False))
    if (
        len(items) != n
        or len(set(zip(items, cl.tolist(), strict=False))) != len(pairs)
        or (n and max(pairs.values()) >= k)
        or np.bincount(list(pairs.values()), minlength=k).tolist() != counts.tolist()
    ):
        raise StateFormatError("interests state is inconsistent (assignments vs counts)")
    return DecodedState(
        view=view,
        dim=dim,
        applied=applied,
        max_ts=max_ts,
        last_event_id=last if has_last else None,
        item_ids=items,
        event_ids=events_raw.split("\n") if events_raw else [],
        ts=ts,
        weights=w,
        clusters=cl,
        counts=counts,
        sums=sums,
    )


def _check_magic_and_version(blob: bytes) -> bool:
    """Checks a state's magic and version; True for a view."""
    if len(blob) < 5 or blob[:4] not in (MAGIC, VIEW_MAGIC):
        raise StateFormatError("not a recstream interests state (bad magic)")
    if blob[4] != FORMAT_VERSION:
        raise StateFormatError(
            f"interests state format version {blob[4]} is not supported "
            f"(this recstream reads version {FORMAT_VERSION})"
        )
    return blob[:4] == VIEW_MAGIC

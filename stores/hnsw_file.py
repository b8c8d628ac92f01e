"""hnswlib's saved index file, read and scrubbed in place.

hnswlib marks a deleted element and keeps it in the graph (a waypoint for searches), vector
included, and `save_index` writes it out with the live ones. A snapshot must not carry what
was deleted, so `scrub_deleted_vectors` zeroes the vectors of the deleted elements in a saved
file. After a restore those elements stay in the graph as waypoints at inner-product distance 1
from every query (cosine 0), never returned; a later insert reuses their slots.

The layout (hnswlib's ``HierarchicalNSW::saveIndex``, unchanged since 0.5): a 96-byte header,
then one block of ``size_data_per_element`` bytes per element (the level-0 link list, whose
4-byte header holds the deleted mark in its third byte; the vector at ``offset_data``; the
label after it), then the upper levels' link lists. The header is checked against what it must
be for the index's dimension, so a change of layout fails loudly instead of scrubbing the wrong
bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData, maxlevel, enterpoint_node, maxM, maxM0, M, mult, ef_construction.
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
_DELETE_MARK = 0x01
_MARK_BYTE = 2  # of the level-0 link list's header


class HnswFileError(ValueError):
    """The file is not an hnswlib index of the expected layout."""


def scrub_deleted_vectors(path: Path, dim: int) -> int:
    """Zero, in the hnswlib index file at ``path`` (float32 vectors of ``dim``), the vector of
    every element marked deleted; returns how many were."""
    with path.open("rb") as f:
        header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise HnswFileError(f"{path}: {len(header)} bytes, shorter than the header")
    fields = _HEADER.unpack(header)
    level0, capacity, count, per_element, label_at, data_at = fields[:6]
    max_m0 = fields[9]
    vector_bytes = 4 * dim
    expected = (0, 4 + 4 * max_m0, data_at + vector_bytes, label_at + 8)
    if (level0, data_at, label_at, per_element) != expected or count > capacity:
        raise HnswFileError(f"{path}: not the hnswlib layout this code knows (dim {dim})")
    if path.stat().st_size < _HEADER.size + count * per_element:
        raise HnswFileError(f"{path}: truncated")
    if count == 0:
        return 0
    blocks = np.memmap(
        path, dtype=np.uint8, mode="r+", offset=_HEADER.size, shape=(count, per_element)
    )
    try:
        deleted = np.flatnonzero(blocks[:, _MARK_BYTE] & _DELETE_MARK)
        if deleted.size:
            blocks[deleted, data_at : data_at + vector_bytes] = 0
            blocks.flush()
        return int(deleted.size)
    finally:
        del blocks

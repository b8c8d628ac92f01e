"""Crash-safe snapshot generations: temp dir + checksummed manifest + fsync + rename.

Layout under a snapshot root::

    root/snap-0000000007/manifest.json   <- written last; lists every file's size and sha256
    root/snap-0000000007/<files...>
    root/.tmp-xxxx/                      <- a snapshot being written (or left by a crash)

A generation is visible only after its directory is renamed into place, and it
is trusted only if its manifest parses and every file matches it, so a crash at
any point, a truncated file or flipped bytes are all detected. One process
snapshots a given root at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_GENERATION = re.compile(r"^snap-(\d{10})$")
_TMP_PREFIX = ".tmp-"


class SnapshotError(Exception):
    """A snapshot is incomplete, corrupt or of an unknown format."""


def write_snapshot(
    root: Path,
    write_files: Callable[[Path], None],
    manifest: Mapping[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write a new generation under `root` and return its path.

    `write_files(tmp_dir)` writes the payload files; this adds ``manifest.json``
    (with `manifest`, a creation time and per-file size + sha256), fsyncs, renames
    the temp dir to the next ``snap-NNNNNNNNNN`` and prunes all but the newest `keep`.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(_TMP_PREFIX + "*"):  # left by a crash mid-snapshot
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    try:
        write_files(tmp)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
        }
        full = {**manifest, "created_unix": time.time(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1), encoding="utf-8")
        for p in tmp.iterdir():
            _fsync_path(p)
        _fsync_path(tmp)
        generations = _generations(root)
        seq = generations[0][0] + 1 if generations else 1
        final = root / f"snap-{seq:010d}"
        os.rename(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in _generations(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def iter_snapshots(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Intact generations under `root`, newest first, as (path, manifest).

    `root` may also be one generation itself. Each broken one is logged as a
    warning with the reason and skipped.
    """
    candidates = [root] if (root / MANIFEST).exists() else [p for _, p in _generations(root)]
    for path in candidates:
        try:
            yield path, verify(path)
        except SnapshotError as exc:
            log.warning("ignoring snapshot %s: %s", path, exc)


def verify(path: Path) -> dict[str, Any]:
    """The manifest of the generation at `path`, after checking every file against it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError("no manifest (half-written)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"unreadable manifest: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise SnapshotError("manifest lists no files")
    for name, meta in files.items():
        p = path / name
        if not p.is_file():
            raise SnapshotError(f"missing file {name}")
        if p.stat().st_size != meta.get("bytes"):
            raise SnapshotError(
                f"{name} has {p.stat().st_size} bytes, manifest says {meta.get('bytes')}"
            )
        if _sha256(p) != meta.get("sha256"):
            raise SnapshotError(f"{name} fails its sha256 checksum")
    return manifest


def _generations(root: Path) -> list[tuple[int, Path]]:
    """(sequence, path) of every generation directory, newest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _GENERATION.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)

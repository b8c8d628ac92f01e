"""Starting again after a crash: faust's local tables are rebuilt from their changelogs unless
the last run left the clean-shutdown marker."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def clean_marker(data_dir: Path) -> Path:
    """The file a clean shutdown leaves in ``data_dir``."""
    return data_dir / "clean-shutdown"


def forget_local_tables_after_crash(data_dir: Path) -> bool:
    """After a crash, rebuild faust's local tables from their changelogs.

    A SIGKILL can leave the local RocksDB ahead of the changelog (a write stored locally
    whose changelog record never reached the broker); faust then refuses to start
    (ConsistencyError). The changelog is the source of truth, and events applied only
    locally are redelivered because their offsets were not committed, so dropping the
    local copy loses nothing. Returns whether the tables were dropped.
    """
    tables = data_dir / "faust"
    dropped = tables.exists() and not clean_marker(data_dir).exists()
    if dropped:
        log.warning("unclean shutdown detected: rebuilding local tables from changelogs")
        shutil.rmtree(tables)
    clean_marker(data_dir).unlink(missing_ok=True)
    return dropped


def mark_clean_shutdown(data_dir: Path) -> None:
    clean_marker(data_dir).touch()

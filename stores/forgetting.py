"""Purging a RocksDB database of what was deleted or overwritten, down to its files.

A RocksDB delete writes a tombstone: the deleted value stays in older SST files (and the write-
ahead log) until a compaction drops it, which may take long. `purge` makes it happen now:

1. flush every memtable (the write-ahead log that holds the deletes becomes obsolete and is
   removed);
2. compact each given column family whole, the bottommost level included, so that only the
   newest version of each live key is left. The whole range, not the deleted keys' ranges:
   RocksDB writes a manual compaction's bounds into its info log (``LOG``), in hex;
3. roll the MANIFEST. It names each SST file with its smallest and largest key, so a deleted
   key that bounded a file stays in it after the file is gone. A database opened with
   `forgetful` options rewrites its MANIFEST afresh at each change; one more change (a marker
   written and deleted, then flushed) leaves a MANIFEST that names only the files left.

A full compaction costs about one rewrite of the compacted column families: purges are meant
for after deletes, a few times an hour at most, not after every write.
"""

from __future__ import annotations

from collections.abc import Sequence

import rocksdict

# A key no store uses (stores' keys are ids and JSON strings: printable, never a NUL first).
_ROLL_KEY = b"\x00recstream:manifest-roll"


def forgetful(options: rocksdict.Options) -> rocksdict.Options:
    """``options`` (database-wide) for a database that `purge` can leave without a trace of
    what was deleted: its MANIFEST is rewritten whole at each change (a few KiB per flush or
    compaction) instead of growing as a log."""
    options.set_max_manifest_file_size(1)
    return options


def purge(db: rocksdict.Rdict, column_families: Sequence[rocksdict.Rdict] = ()) -> None:
    """Flush ``db`` and every one of ``column_families`` (handles of ``db``'s own, as
    ``db.get_column_family`` gives them; none: only ``db``'s default), compact them whole, then
    roll the MANIFEST (see the module docstring). ``db`` must have been opened with `forgetful`
    options for the MANIFEST to forget.

    Blocks until done; safe while other threads read and write ``db``.
    """
    families = list(column_families) or [db]
    for family in (db, *column_families):
        family.flush()
    compaction = rocksdict.CompactOptions()
    compaction.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
    for family in families:
        family.compact_range(None, None, compaction)
    db.put(_ROLL_KEY, b"")
    db.delete(_ROLL_KEY)
    db.flush()

"""faust tables whose changelog records go out through an ``Outbox``, unlogged on disk.

faust sends each changelog record on its own as the table is written (a future, a queue hop and
an await per record) and its RocksDB stores write through a write-ahead log. ``outbox_table``
gives an app a Table class whose changelog records join a batch's other records in an
``Outbox`` (one record batch per partition, confirmed together before the batch is acked) and
whose stores write without a WAL (the changelog is the log). The caller closes each batch:
``add_end_markers`` before the outbox is flushed, ``set_persisted_offsets`` after it, which
is what faust does per changelog record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stores.forgetting import forgetful
from streams.faust_runtime.outbox import Outbox

END_MARKER_KEY = "\x00recstream:end-of-batch"
"""Key of the tombstone that closes a batch on each written changelog partition (no user id
can be it: ids are validated printable strings)."""


class _Written:
    """What faust's ``Table.on_key_set`` reads back from ``send_changelog``."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message = self
        self.partition = partition


class UnloggedRocksDB:
    """faust's RocksDB options, opening databases that write without a write-ahead log.

    The changelog is a table's log: after a crash the worker rebuilds its local tables from
    the changelogs anyway, and a memtable lost at exit takes the persisted changelog offset
    with it, so the restart only replays more. The WAL cost more than the memtable insert of
    each state write.
    """

    def __init__(self, options: Any) -> None:
        self._options = options

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        """faust's ``RocksDBOptions.open`` (rocksdict), with `forgetful` options: a purge
        (`stores.forgetting.purge`) leaves no trace of a deleted row in the files."""
        from rocksdict import AccessType, Rdict, ReadOptions, WriteOptions

        options = self._options
        access = (
            AccessType.read_write() if options.ttl is None else AccessType.with_ttl(options.ttl)
        )
        db = Rdict(str(path), options=forgetful(options.as_options()), access_type=access)
        db.set_read_options(ReadOptions())
        unlogged = WriteOptions()
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; stub says method
        db.set_write_options(unlogged)
        return db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._options, name)


def outbox_table(outbox: Outbox, touched: set[tuple[Any, int]]) -> type:
    """A faust Table class whose changelog records go to ``outbox`` (sent with the batch's
    other records when the batch is confirmed), noting each written (table, changelog
    partition) in ``touched``; its RocksDB stores write without a WAL."""
    import faust

    class OutboxTable(faust.Table):
        def _new_store_by_url(self, url: Any) -> Any:
            store = super()._new_store_by_url(url)
            options = getattr(store, "rocksdb_options", None)
            if options is not None and getattr(options, "use_rocksdict", False):
                store.rocksdb_options = UnloggedRocksDB(options)  # type: ignore[attr-defined]
            return store

        def changelog_key(self, key: Any) -> bytes:
            """``key`` as the table stores it (and as its changelog records carry it)."""
            raw = self.app.serializers.dumps_key(self.key_type, key, serializer=self.key_serializer)
            assert raw is not None
            return raw

        def send_changelog(
            self,
            partition: int | None,
            key: Any,
            value: Any,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> Any:
            if partition is None:
                raise RuntimeError("table written outside of an engagement's processing")
            raw = None
            if value is not None:
                raw = self.app.serializers.dumps_value(
                    self.value_type, value, serializer=value_serializer or self.value_serializer
                )
            outbox.add(
                self.changelog_topic.get_topic_name(),
                self.changelog_key(key),
                raw,
                partition=partition,
            )
            touched.add((self, partition))
            return _Written(partition)

    return OutboxTable


def add_end_markers(outbox: Outbox, touched: Iterable[tuple[Any, int]]) -> None:
    """End each written changelog partition on a one-record batch (see
    ``KafkaSettings.one_record_batches``): a tombstone for a key no table holds."""
    outbox.seal()
    for table, partition in touched:
        topic = table.changelog_topic.get_topic_name()
        key = table.changelog_key(END_MARKER_KEY)
        outbox.add(topic, key, None, partition=partition)


def set_persisted_offsets(
    touched: Iterable[tuple[Any, int]], written: dict[tuple[str, int], int]
) -> None:
    """What faust does per changelog record: the local store remembers how far it is
    written, so a restart replays only the changelog's tail into it."""
    from faust.types import TP

    for table, partition in touched:
        topic = table.changelog_topic.get_topic_name()
        offset = written.get((topic, partition))
        if offset is not None:
            table.data.set_persisted_offset(TP(topic, partition), offset)


class PartitionEvent:
    """What faust reads of its "current event" to write a table: the source topic and the
    partition (which selects the partition's store and the changelog partition). Set as the
    current event (``faust.streams._current_event``, a weak reference: keep this alive) to write
    a table outside stream iteration, on behalf of a key of that partition."""

    __slots__ = ("__weakref__", "partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition

    @property
    def message(self) -> PartitionEvent:
        return self


def assigned_stores(table: Any) -> list[tuple[int, Any]]:
    """(partition, RocksDB database) of each partition of ``table`` assigned to this worker
    (standbys excluded), as faust's RocksDB store holds them."""
    from faust.types import TP

    store = table.data
    actives = table.app.assignor.assigned_actives()
    topic = table.changelog_topic.get_topic_name()
    return [(p, db) for p, db in list(store._dbs.items()) if TP(topic, p) in actives]


def store_of(table: Any, partition: int) -> Any | None:
    """The RocksDB database of ``table``'s ``partition`` while faust holds it open, else None."""
    return table.data._dbs.get(partition)


def stored_rows(table: Any, db: Any) -> Iterator[tuple[Any, Any]]:
    """The (key, value) rows of one of ``table``'s partition databases, decoded as the table
    reads them."""
    store = table.data
    for key, value in store._visible_items(db):
        yield store._decode_key(key), store._decode_value(value)

"""The interests worker: ``engagements`` -> per-user ``InterestClusters`` -> ``user-interests``.

One faust app (``recstream worker interests``):

- **agent on engagements** (keyed by user): takes events in batches (``take_waiting``: a batch
  closes once it holds every event the broker had, so a lagging worker takes big batches and
  a caught-up one is not held by a timer; the next batch fills while one is worked on), groups
  them by user, and sends each user's events with their item vectors to the **engine process**
  (``engine_process``: the users' ``InterestClusters`` live in a child process, so the engine's
  numpy work and faust's consume path run on two cores), in chunks of users. It writes each
  changed state once per batch to the ``interests`` table (rocksdb store, changelog-backed) and
  publishes the user's interests to the compacted ``user-interests`` topic.
- **item feed** (a task): every worker reads *all* partitions of ``item-embeddings`` into a
  local RocksDB item store (with an LRU in front), so any worker can look up any item. The
  agent starts only once the feed has caught up with the topic ends seen at start.
- **parking**: an engagement whose item has no embedding yet is parked in the ``parked`` table
  (bounded per user, persisted through its changelog). When the embedding arrives, the worker
  re-publishes the parked events to ``engagements`` (same key, same event id), and the agent
  applies them like any other event. Idempotence by event id makes every redelivery harmless.
- ``item_deleted`` reaches this worker as a tombstone on ``item-embeddings``: the item leaves
  the item store and joins a deleted set; the **sweep** (``sweep``, from the housekeeping timer)
  rewrites every stored state of the assigned partitions that names it and publishes the
  user's record again, and drops parked engagements on it. After every recovery of the tables
  the sweep checks all assigned states against the item store.
- ``user_deleted`` empties the user's state, deletes its rows (``interests``, ``parked``) and
  publishes a tombstone to ``user-interests``.
- The local stores that held forgotten rows are purged (``purge``: flush, full compaction,
  MANIFEST rolled), at most every ``--purge-every`` seconds; a purge owed at a stop or a crash
  is done after the next start's recovery.
- Bad messages go to ``dead-letters`` with the reason.

Guarantee: at-least-once from Kafka, exactly-once in effect: each stored state carries the
(partition, offset) of the last engagement it holds, and the engine skips event ids it applied.
A batch's changelog and ``user-interests`` records go out through an ``Outbox`` (one record
batch per partition) and are confirmed by the broker before the batch's offsets are acked,
hence before faust can commit them. A rebalance cuts a batch short between two chunks; what
is left is not acked and comes again after the rebalance (``InterestsWorker.process``). Table
writes need faust's "current event" (it picks the changelog partition from it); a batch from
``take_waiting`` has none, so the agent sets it to the user's last event before writing.

Where the time goes (see docs/performance.md): faust's per-event consume path on this
process's core, the engine (learn, summaries, state bytes) on the engine process's; records out
are batched, the table stores write without a WAL, the loop is uvloop's and full garbage
collections walk only what is new (``streams.faust_runtime.heap.FreezeSurvivors``).

Modules: ``worker`` (``InterestsWorker``: the agent, the batch loop, the process's run),
``app`` (the faust app, its topics and tables), ``config``, ``metrics``, ``item_feed``,
``planning`` (each user's job), ``parking``, ``delivery`` (records out confirmed before acks,
dead letters), ``lag``, ``recovery`` (after a crash), ``sweep`` (deleted items out of the
stored states), ``purge`` (the local stores' files), ``engine_process``. Nothing is imported
here: the engine process's child imports this package and needs none of the worker.
"""

"""``InterestsWorker``: wires the worker's parts together and runs the agent's batch loop (each
batch planned, applied by the engine in chunks of users, written, confirmed, then acked); the
package docstring says which module holds which part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from stores.kv import StateDB
from streams.faust_runtime.batching import take_waiting
from streams.faust_runtime.event_loop import use_event_loop
from streams.faust_runtime.heap import FreezeSurvivors
from streams.faust_runtime.outbox import Outbox
from streams.faust_runtime.tables import PartitionEvent, outbox_table
from streams.schemas import Engagement, InvalidEvent
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, USER_INTERESTS
from streams.workers.interests.app import STATE_POSITION, create_app
from streams.workers.interests.config import InterestsWorkerConfig
from streams.workers.interests.delivery import Delivery, ackable
from streams.workers.interests.engine_process import (
    ENGINES,
    FORGET,
    Batch,
    EngineProcess,
    EngineProcessError,
    LocalEngine,
    UserJob,
    UserResult,
)
from streams.workers.interests.item_feed import ItemFeed
from streams.workers.interests.lag import ConsumerLag
from streams.workers.interests.metrics import WorkerMetrics
from streams.workers.interests.parking import Parking
from streams.workers.interests.planning import (
    BatchVectors,
    Planned,
    Planner,
    engagement_or_error,
)
from streams.workers.interests.purge import StorePurges
from streams.workers.interests.recovery import (
    forget_local_tables_after_crash,
    mark_clean_shutdown,
)
from streams.workers.interests.sweep import ItemSweep

log = logging.getLogger(__name__)


class _Chunk(NamedTuple):
    """A request to the engine process in flight."""

    planned: list[Planned]
    results: asyncio.Future[list[UserResult]]
    outcomes: Tally[str]  # of the events not sent (redeliveries, parked, user deletions)
    sent: float  # perf_counter


class InterestsWorker:
    """The faust app and the logic of its agent (see the package docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        config: InterestsWorkerConfig | None = None,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or InterestsWorkerConfig()
        self.metrics = metrics or WorkerMetrics()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        rebuilt = forget_local_tables_after_crash(cfg.data_dir)
        # Changelog and user-interests records of the current batch, sent together after it.
        self.outbox = Outbox(settings, client_id=f"{cfg.app_id}-outbox")
        # (table, changelog partition) written in the current batch: end markers, offsets.
        touched: set[tuple[Any, int]] = set()
        declared = create_app(settings, cfg, outbox_table(self.outbox, touched))
        self.app = declared.app
        self.engagements = declared.engagements
        self.states = declared.states
        self.parked = declared.parked
        self.delivery = Delivery(
            self.outbox,
            touched,
            declared.dead_letters,
            self.metrics,
            one_record_batches=settings.one_record_batches,
        )
        self.items_db = StateDB(cfg.data_dir / "items")
        if rebuilt:  # the changelogs replay superseded rows of what was forgotten
            self.items_db.mark_purge_due()
        self.feed = ItemFeed(settings, self.items_db, cfg.item_cache_vectors)
        self.parking = Parking(
            declared.parked,
            self.engagements,
            self.feed,
            self.delivery,
            self.metrics,
            cfg.max_parked_per_user,
        )
        declared.parked.on_recover(self.parking.on_recovered)
        self.planner = Planner(self.states, self.feed, self.parking, cfg.state_cache_users)
        self.sweep = ItemSweep(self.states, self.parked, self.feed)
        declared.states.on_recover(self._on_states_recovered)
        self.purges = StorePurges(self.items_db, self.metrics, cfg.purge_every_s)
        # Held while a batch or a sweep writes: one writer of the tables and the engine.
        self._writing = asyncio.Lock()
        self.lag = ConsumerLag(self.app, self.metrics.lag)
        self._engine: EngineProcess | LocalEngine | None = None
        # Engagements decoded as they are taken, by (partition, offset) until processed (a
        # message read again has the same bytes, so an entry never goes stale).
        self._decoded: dict[tuple[Any, int], Any] = {}
        self._agent_ready = self._assigned = self._consuming = False
        self.app.agent(self.engagements, name="interests")(self._agent)
        self.app.task(self._feed_task)
        self.app.timer(2.0)(self._housekeeping)
        self.app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        self.app.on_rebalance_complete.connect(cast(Any, self._on_rebalance_complete))

    @property
    def engine(self) -> EngineProcess | LocalEngine:
        if self._engine is None:
            raise RuntimeError("the engine process runs only while the worker runs")
        return self._engine

    # -- faust wiring -------------------------------------------------------------------

    async def _feed_task(self) -> None:
        await self.feed.run()

    def _mark_consuming(self) -> None:
        """Set the consuming-since gauge once: when the agent is ready (item feed loaded) and
        the first partitions are assigned, whichever comes last."""
        if self._agent_ready and self._assigned and not self._consuming:
            self._consuming = True
            self.metrics.consuming_since.set_to_current_time()

    async def _on_states_recovered(self) -> None:
        # States of these partitions may name items deleted while they were elsewhere.
        self.sweep.on_recovered()
        if self.purges.owed_at_start:  # once, for what the last run did not purge
            self.purges.owed_at_start = False
            self.purges.note_all([self.states, self.parked])

    async def _on_revoked(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these users next: forget what we cached about them.
        self.planner.forget()
        if self._engine is not None:
            await self._engine.clear()
        self.lag.next_offset.clear()
        self.parking.forget()

    async def _on_rebalance_complete(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Just before faust seeks the assigned partitions (to their committed offsets, or
        their beginning: ``streams.faust_runtime.consumer.SeekWithFlowHeld``) and resumes the
        flow."""
        self._assigned = True
        self._mark_consuming()
        consumer: Any = self.app.consumer
        # faust fixes the fetch wait at 1.5 s; the embedded broker waits it out (see settings).
        consumer._thread._ensure_consumer()._fetcher._fetch_max_wait_ms = (
            self.settings.fetch_max_wait_ms
        )
        self.metrics.partitions.set(
            sum(tp.topic == ENGAGEMENTS.name for tp in consumer.assignment())
        )

    async def _agent(self, stream: Any) -> None:
        await self.feed.ready.wait()
        await self.outbox.start([USER_INTERESTS.name])
        self._agent_ready = True
        self._mark_consuming()
        decoded = self._decoded

        def decode(value: Any) -> Any:
            # As events are taken, so while the previous batch is worked on.
            message = stream.current_event.message
            decoded[message.tp, message.offset] = engagement_or_error(value)
            return value

        stream.add_processor(decode)  # before take_waiting's
        try:
            async for events in take_waiting(
                stream, self.config.batch_size, self.config.batch_within_s
            ):
                self.metrics.batch_size.observe(len(events))
                async with self._writing:
                    async with self._crash_if_the_engine_fails():
                        undone = await self.process(events)
                    await self.delivery.confirm()
                if undone:
                    # Not acked, so not committed: the rebalance seeks every partition back to
                    # its committed offset and they come again, to whoever owns them then.
                    events[:] = ackable(events, undone)
                    self.metrics.deferred.inc(len(undone))
                await self.lag.update()
        finally:
            stream._processors.remove(decode)
            decoded.clear()
            await self.outbox.stop()

    @contextlib.asynccontextmanager
    async def _crash_if_the_engine_fails(self) -> AsyncIterator[None]:
        """No state can be applied without the engine process: its failure stops the worker (a
        supervisor starts it again; nothing unconfirmed was acked)."""
        try:
            yield
        except EngineProcessError as exc:
            log.critical("%s: stopping the worker", exc)
            await self.app.crash(exc)
            raise

    async def _housekeeping(self) -> None:
        await self.parking.republish_arrived()
        await self.sweep_deleted_items()
        await self.purges.run_due()
        await self.lag.update()
        self.metrics.items.set(self.items_db.items.estimated_len())

    # -- processing ---------------------------------------------------------------------

    async def process(self, events: Sequence[Any]) -> list[Any]:
        """Apply one batch of engagement-topic events (faust ``Event`` objects); returns those
        left undone because a rebalance began.

        Users go to the engine process in chunks, the next chunk sent before the previous one's
        results are written, so the engine and this event loop (which meanwhile runs faust's
        consume path for the next events) work at once.

        A rebalance stops a batch between two chunks: faust counts it (in its consumer thread)
        before it revokes anything. A chunk whose results come back after the count changed is
        dropped (and the engine process forgets every state), so nothing is written here after
        this worker may have let its partitions go. A batch taken while a rebalance holds the
        flow (its events were fetched before the revocation), and events of an older consumer
        generation, are left undone too: faust skips such events in its own buffers. Every
        rebalance ends by seeking the partitions to their committed offsets, so the undone
        events come again.
        """
        app = self.app
        rebalances = app.rebalancing_count
        taken = [(ev, self._decoded.pop((ev.message.tp, ev.message.offset), None)) for ev in events]
        if not app.flow_control.is_active():
            return list(events)
        generation = app.consumer_generation_id
        # The backlog as this batch starts (a restarted worker may take it all in one batch, so
        # the gauge updated after each batch would never show it).
        next_offset = self.lag.next_offset
        for ev in events:
            if ev.message.generation_id == generation:
                next_offset.setdefault(ev.message.partition, ev.message.offset)
        await self.lag.update()
        undone: list[Any] = []
        per_user: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()
        for ev, decoded in taken:
            msg = ev.message
            if msg.generation_id != generation:
                undone.append(ev)
                continue
            next_offset[msg.partition] = max(next_offset.get(msg.partition, 0), msg.offset + 1)
            if decoded is None:  # not taken through the agent's decoder
                decoded = engagement_or_error(ev.value)
            if isinstance(decoded, InvalidEvent):
                reason = decoded.reason
                await self.delivery.dead_letter(
                    ev.value, reason, msg.partition, msg.offset, msg.key
                )
                continue
            per_user.setdefault(decoded.user_id, []).append((ev, decoded))
        users = list(per_user.items())
        outcomes: Tally[str] = Tally()
        in_flight: _Chunk | None = None
        try:
            for start in range(0, len(users), self.config.chunk_users):
                if app.rebalancing_count != rebalances:
                    for _, evs in users[start:]:
                        undone.extend(event for event, _ in evs)
                    break
                chunk = await self._send_chunk(users[start : start + self.config.chunk_users])
                if in_flight is not None:
                    undone.extend(
                        await self._finish_chunk(
                            in_flight, rebalances, outcomes, observe_latency=True
                        )
                    )
                in_flight = chunk
            if in_flight is not None:
                undone.extend(
                    await self._finish_chunk(in_flight, rebalances, outcomes, observe_latency=True)
                )
                in_flight = None
        finally:
            if in_flight is not None:  # an error: let the chunk in flight end before going on
                await asyncio.gather(in_flight.results, return_exceptions=True)
        for outcome, n in outcomes.items():
            self.metrics.events.labels(outcome).inc(n)
        return undone

    async def _send_chunk(self, users: list[tuple[str, list[tuple[Any, Any]]]]) -> _Chunk:
        """Plan each user's job and send them all to the engine process."""
        from faust.streams import _current_event

        item_ids = dict.fromkeys(
            d.item_id for _, evs in users for _, d in evs if isinstance(d, Engagement)
        )
        vectors = BatchVectors(*self.feed.lookup(list(item_ids)))
        planned: list[Planned] = []
        outcomes: Tally[str] = Tally()
        for user_id, user_events in users:
            # faust picks a table write's changelog partition from the current event.
            _current_event.set(weakref.ref(user_events[-1][0]))
            planned.append(await self.planner.plan_user(user_id, user_events, vectors, outcomes))
        return self._submit(planned, vectors, outcomes)

    def _submit(
        self, planned: list[Planned], vectors: BatchVectors, outcomes: Tally[str]
    ) -> _Chunk:
        """Send planned jobs (and the deletes the engine process has not heard of) to it."""
        jobs = [UserJob(p.user_id, p.stored, p.fresh, p.ops, p.redelivered) for p in planned]
        deleted, undeleted = self.planner.deleted_since_sent()
        sent = time.perf_counter()
        batch = Batch(jobs, vectors.ids, vectors.matrix(), deleted, undeleted)
        return _Chunk(planned, self.engine.apply(batch), outcomes, sent)

    async def _finish_chunk(
        self, chunk: _Chunk, rebalances: int, outcomes: Tally[str], *, observe_latency: bool
    ) -> list[Any]:
        """Write a chunk's results (table, records out); returns its events if a rebalance
        began meanwhile (nothing written then). ``observe_latency``: the chunk applies users'
        events (a sweep's chunk applies none, so it is no engagement's update latency)."""
        from faust.streams import _current_event

        results = await chunk.results
        if self.app.rebalancing_count != rebalances:
            # Possibly revoked while the engine worked: forget what it learned; all of it
            # comes again after the rebalance.
            self.planner.forget()
            await self.engine.clear()
            return [event for plan in chunk.planned for event, _ in plan.pairs]
        outcomes.update(chunk.outcomes)
        refused: list[tuple[Planned, list[tuple[str, str]]]] = []
        for plan, result in zip(chunk.planned, results, strict=True):
            applied = sum(result.learned)
            outcomes["applied"] += applied
            outcomes["duplicate"] += len(result.learned) - applied - len(result.rejected)
            if result.rejected:
                refused.append((plan, result.rejected))
            if result.blob is None and not result.empty:
                continue  # nothing changed
            event = plan.pairs[-1][0]
            _current_event.set(weakref.ref(event))
            user_id = plan.user_id
            if FORGET in plan.ops:  # a deleted user: their old rows must leave the files
                self.purges.note_partition(self.states, event.message.partition)
                self.purges.note_partition(self.parked, event.message.partition)
            if result.empty:
                self.planner.forget_user(user_id)
                if user_id in self.states:
                    del self.states[user_id]
                self.outbox.add(USER_INTERESTS.name, user_id.encode(), None)
                continue
            assert result.blob is not None and plan.position is not None
            self.states[user_id] = STATE_POSITION.pack(*plan.position) + result.blob
            # Sent with the batch's other records by delivery.confirm.
            self.outbox.add(USER_INTERESTS.name, user_id.encode(), result.record)
        if observe_latency:
            latency = time.perf_counter() - chunk.sent
            observe = self.metrics.update_latency.observe
            for _ in chunk.planned:
                observe(latency)
        # Full record batches go now, while the engine works on the next chunk: the batch's
        # confirmation then waits only for its last records.
        await self.outbox.send_full()
        for plan, rejected in refused:  # after the writes: no await among them
            await self.delivery.dead_letter_rejected(plan.pairs, rejected)
        return []

    # -- deleted items ------------------------------------------------------------------

    async def sweep_deleted_items(self) -> None:
        """Rewrite every stored state of the assigned partitions that names a deleted item
        (``sweep``), publish its user's record again, and drop parked engagements on deleted
        items; the stores written are noted for a purge."""
        sweep = self.sweep
        if not (sweep.due and self._agent_ready and self._assigned):
            return
        async with self._writing:
            app = self.app
            if not app.flow_control.is_active():
                return  # a rebalance: the recovery that ends it asks for a full check
            rebalances = app.rebalancing_count
            items, check_all = sweep.take()
            if items:
                self.purges.note_items()
            affected = sweep.affected(items, check_all)
            contexts: dict[int, PartitionEvent] = {}

            def context(partition: int) -> PartitionEvent:
                return contexts.setdefault(partition, PartitionEvent(ENGAGEMENTS.name, partition))

            from faust.streams import _current_event

            for partition, user_id, kept in affected.parked:
                _current_event.set(weakref.ref(cast(Any, context(partition))))
                self.parking.store(user_id, kept, len(self.parking.of(user_id)))
                self.purges.note_partition(self.parked, partition)
            size = self.config.chunk_users
            for start in range(0, len(affected.states), size):
                part = affected.states[start : start + size]
                vectors = BatchVectors([], np.zeros((0, 0), dtype=np.float32))
                planned = [
                    self.planner.plan_sweep(user_id, row, context(partition), vectors)
                    for partition, user_id, row in part
                ]
                chunk = self._submit(planned, vectors, Tally())
                async with self._crash_if_the_engine_fails():
                    undone = await self._finish_chunk(
                        chunk, rebalances, Tally(), observe_latency=False
                    )
                if undone:
                    sweep.retry(items, check_all)  # a rebalance began: nothing was written
                    break
                for partition, _, _ in part:
                    self.purges.note_partition(self.states, partition)
                self.metrics.swept.inc(len(part))
            await self.delivery.confirm()
        if affected.states or affected.parked:
            log.info(
                "swept %d deleted items from %d states and %d users' parked engagements",
                len(items),
                len(affected.states),
                len(affected.parked),
            )

    # -- running ------------------------------------------------------------------------

    def run(self, loglevel: str = "warn") -> None:
        """Run the worker in the foreground until SIGINT/SIGTERM."""
        import faust

        if self.config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.config.metrics_port, addr=self.config.metrics_host)
        use_event_loop(self.config.event_loop)
        worker = faust.Worker(self.app, loglevel=loglevel, quiet=True)
        cfg = self.config
        engine = ENGINES[cfg.engine_in](cfg.engine, cfg.publishing, cfg.state_cache_users)
        self._engine = engine
        heap = FreezeSurvivors(cfg.full_gc_every_s) if cfg.full_gc_every_s else None
        if heap is not None:
            heap.install()
        clean = False
        try:
            worker.execute_from_commandline()
            clean = True
        except SystemExit as exc:
            clean = exc.code in (0, None)
            raise
        finally:
            if heap is not None:
                heap.uninstall()
            engine.stop()
            self._engine = None
            self.purges.close()
            self.items_db.close()
            if clean:
                mark_clean_shutdown(cfg.data_dir)

"""Two changes to faust's transport consumer, for every app of this project's workers.

**QuickDrain**: faust's ``Consumer._drain_messages`` hands every fetched message to the topic
conductor through ``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks
(the callback, the suspended flow, the consumer's stopped and crashed events), an
``asyncio.wait`` and three cancellations per message, so that a callback blocked on a full
stream buffer gives up when a rebalance suspends the flow. At full speed that is a fifth of the
interests worker's time (py-spy, GIL samples), for callbacks that nearly never block.
``QuickDrain`` runs the callback inline up to its first suspension. One that finishes without
suspending (the buffer had room, the flow was on) costs no task; one that suspends is handed,
where it stopped, to the same ``wait_first`` as before. The rest is faust's loop (faust-streaming
0.11 to 0.15) unchanged.

**SeekWithFlowHeld**: after every rebalance faust resumes the source partitions, seeks them to
their committed offsets (``perform_seek``) and then clears the streams' buffers. The drain runs
meanwhile: records prefetched before the seek reach the streams (to be cleared) and move the
drain's read offsets past the committed ones, so the same records read again after the seek
are taken for ones already read and skipped. Never processed nor acked, they stall the commit;
when they come again (next rebalance or restart), later events of the same users are applied
already, and the worker takes them for redeliveries. This lost events at the first assignment
after a restart: 65 to 300 of 300 users short of events in 8 of 17 SIGKILL-and-restart runs of
50k events with QuickDrain, whose quicker drain widens the window (faust's own has the same
race). ``SeekWithFlowHeld.perform_seek`` stops the consumer's flow first: the drain delivers
nothing until the caller (faust's recovery) resumes the flow after the seek, and then it starts
at the committed offsets. It also starts partitions without a committed offset at their
beginning when ``consumer_auto_offset_reset`` is ``earliest``: aiokafka seeks only partitions
with one, and the others would keep the position their dropped prefetch reached
(faust-streaming #216).

``use_quick_consumer(app)`` gives an app (before its consumer exists) a consumer with both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, cast


class _Resumed:
    """The rest of a coroutine that suspended at ``yielded`` on its first step: awaiting this
    (in a task) passes what the coroutine yields up and what the task sends down, as if the
    task had run it from the start."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or a failed future: the coroutine's
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def deliver(callback_result: Coroutine[Any, Any, Any], wait_first: Any, flow: Any) -> None:
    """Run ``callback_result`` (a coroutine not started yet) inline; if it suspends, await the
    rest through ``wait_first(rest, flow.wait())`` as faust does (a suspended flow abandons
    it)."""
    try:
        yielded = callback_result.send(None)
    except StopIteration:
        return  # delivered without suspending: the common case
    await wait_first(_Resumed(callback_result, yielded), flow.wait())


class QuickDrain:
    """Mixin for faust's transport ``Consumer``: ``_drain_messages`` with the callback run
    inline (see the module docstring)."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - faust's loop
        from faust.transport.consumer import CONSUMER_FETCHING

        me = cast(Any, self)
        callback = me.callback
        getmany = me.getmany
        consumer_should_stop = me._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = me._read_offset.__getitem__
        set_read_offset = me._read_offset.__setitem__
        set_flag = me.diag.set_flag
        unset_flag = me.diag.unset_flag
        commit_every = me._commit_every
        acks_enabled_for = me.app.topics.acks_enabled_for
        wait_first = me.wait_first
        suspend_flow = me.suspend_flow
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator[Any], getmany(timeout=1.0))
                await me.sleep(0)  # getmany may not yield to the loop at all
                if not me.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await me._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and me._n_acked >= commit_every:
                                me._n_acked = 0
                                await me.commit()
                            await deliver(callback(message), wait_first, suspend_flow)
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except me.consumer_stopped_errors:
            if me.transport.app.should_stop:
                me.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if me.transport.app.should_stop:
                me.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            me.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class SeekWithFlowHeld:
    """Mixin for faust's transport ``Consumer``: ``perform_seek`` (seek the assigned partitions
    to their committed offsets) with the flow stopped, uncommitted source partitions from their
    beginning (see the module docstring)."""

    async def perform_seek(self) -> None:
        me = cast(Any, self)
        # Resumed by every caller once this returns (faust's recovery, or getmany, which calls
        # this only while the flow is stopped anyway).
        me.stop_flow()
        # aiokafka's seek_to_committed refuses an empty assignment (more workers than partitions).
        committed: dict[Any, int | None] = (
            dict(await me.seek_to_committed()) if me.assignment() else {}
        )
        if me.app.conf.consumer_auto_offset_reset == "earliest":
            for tp, offset in committed.items():
                if (offset is None or offset <= 0) and me.app.topics.acks_enabled_for(tp.topic):
                    await me.seek(tp, 0)
        # What faust's perform_seek does with the committed offsets.
        me._read_offset.update(
            {tp: (o if o is not None and o >= 0 else None) for tp, o in committed.items()}
        )
        me._committed_offset.update({tp: o or None for tp, o in committed.items() if o is not None})


def use_quick_consumer(app: Any) -> None:
    """Make ``app``'s consumer (not created yet) drain with ``QuickDrain`` and seek with
    ``SeekWithFlowHeld``."""
    transport = app.transport
    base = transport.Consumer
    if not issubclass(base, QuickDrain):
        # An attribute of this app's transport only: other apps keep faust's consumer.
        transport.Consumer = type(f"Quick{base.__name__}", (QuickDrain, SeekWithFlowHeld, base), {})

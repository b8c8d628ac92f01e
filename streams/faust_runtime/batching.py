"""Batches of stream events that close when nothing more is waiting.

faust's ``Stream.take_events(max_, within)`` closes a batch when it holds ``max_`` events or
when ``within`` has passed. Neither fits a worker that must be fresh when the stream is light
and efficient when it lags: a short ``within`` cuts catch-up into small batches (one state
write per user per batch, so little is coalesced), and a long one delays every light-load
event by ``within``. ``take_waiting`` closes a batch as soon as it holds every event the
broker had: the stream's queue is empty and no partition the batch read from has more events
than were fetched (its high watermark). ``max_`` and ``within`` stay as bounds.

A caller may leave part of a batch undone (a rebalance began: the partitions' next owners will
do it) by removing those events from the list before asking for the next one: only what is
left in the list is acked.

It follows ``take_events`` (faust-streaming 0.11 to 0.15) closely, on the same stream
internals: a processor fills the buffer while the stream is drained passively, events are
acked once the caller is done with their batch. Unlike ``take_events``, the next batch fills
while the caller works on the current one (at the caller's awaits): a caller that awaits
other processes (the interests worker's engine) keeps consuming meanwhile. At most two
batches are held: one being worked on, one filling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


async def take_waiting(stream: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    """Yield lists of the faust ``Event``s of ``stream``: a list closes when it holds every
    event the broker had (the stream's queue is empty and the partitions read are at their
    high watermarks), when it holds ``max_`` events, or ``within`` seconds after the previous
    list was handed over. The next list fills while the caller works on one. The events left in
    a list are acked when the caller asks for the next one (a caller removes the events it did
    not handle)."""
    if max_ < 1:
        raise ValueError(f"max_ must be at least 1: {max_}")
    events: list[Any] = []
    ready = asyncio.Event()  # the batch can close (it holds all that was waiting, or is full)
    taken = asyncio.Event()  # a full batch was handed over: the filler may go on
    queue = stream.channel.queue
    consumer = stream.app.consumer
    fetched: dict[Any, int] = {}  # partition -> next offset after the events read from it

    def behind() -> bool:
        """Whether a partition read from has events the consumer has not fetched yet (a
        partition revoked since is forgotten: if it comes back, it counts once read again)."""
        revoked = []
        lagging = False
        for tp, offset in fetched.items():
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not assigned to this consumer any more
                revoked.append(tp)
                continue
            # One offset short may be a transaction marker, which is never delivered.
            if highwater is not None and highwater > offset + 1:
                lagging = True
                break
        for tp in revoked:
            del fetched[tp]
        return lagging

    async def add_to_batch(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_waiting found no current event")
        events.append(event)
        message = event.message
        fetched[message.tp] = message.offset + 1
        if len(events) >= max_:
            ready.set()
            taken.clear()
            await stream.wait(taken)  # never more than max_ in a batch
        elif queue.empty() and not behind():
            ready.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked here, once the caller is done with the batch
    stream.add_processor(add_to_batch)
    stream._enable_passive(stream.channel)
    loop = asyncio.get_running_loop()
    handed_at = loop.time()
    try:
        while not stream.should_stop:
            # ``within`` counts from the previous hand-over: a caller that worked longer gets
            # what filled meanwhile at once.
            timeout = max(handed_at + within - loop.time(), 0.0)
            await stream.wait_for_stopped(ready, timeout=timeout)
            ready.clear()
            if not events:
                if timeout == 0.0:
                    handed_at = loop.time()  # nothing came: wait a whole ``within`` again
                continue
            batch = list(events)
            events.clear()
            handed_at = loop.time()
            taken.set()  # the filler goes on with the next batch
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add_to_batch)

"""What a batch sends, and which of its events may be acked.

A batch's changelog and ``user-interests`` records go out through an ``Outbox`` (one record
batch per partition) and are confirmed by the broker before the batch's offsets are acked,
hence before faust can commit them; bad messages go to ``dead-letters`` with the reason, on
faust's producer, and their letters are settled before the acks too (written, or sent without
the original's bytes, or their loss logged and counted: see ``streams.deadletters``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from streams.deadletters import (
    dead_letter,
    letter_bytes,
    letter_key,
    log_lost,
    log_refused,
    without_original,
)
from streams.faust_runtime.outbox import Outbox
from streams.faust_runtime.tables import add_end_markers, set_persisted_offsets
from streams.schemas import DeadLetter, Engagement
from streams.topics import ENGAGEMENTS
from streams.workers.interests.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Delivery:
    """Confirms a batch's records out, and sends dead letters."""

    def __init__(
        self,
        outbox: Outbox,
        touched: set[tuple[Any, int]],
        dead_letters: Any,
        metrics: WorkerMetrics,
        *,
        one_record_batches: bool,
    ) -> None:
        # Changelog and user-interests records of the current batch, sent together after it.
        self.outbox = outbox
        # (table, changelog partition) written in the current batch: end markers, offsets.
        self.touched = touched
        self.dead_letters = dead_letters  # the faust topic
        self.metrics = metrics
        self.one_record_batches = one_record_batches
        # Letters sent and not yet confirmed: (letter, delivery future, is a stand-in).
        self._letters: list[tuple[DeadLetter, Any, bool]] = []

    async def confirm(self) -> None:
        """Send the batch's changelog and output records; wait until the broker has them all.

        The batch's offsets are acked (hence committable) right after this returns, so a
        SIGKILL at any point loses no event: what was not confirmed is consumed again.
        """
        touched = sorted(self.touched, key=lambda tp: (tp[0].name, tp[1]))
        self.touched.clear()
        if touched and self.one_record_batches:
            add_end_markers(self.outbox, touched)
        written = await self.outbox.flush()
        set_persisted_offsets(touched, written)
        await self.settle_letters()

    async def dead_letter(
        self,
        raw: bytes | None,
        reason: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
    ) -> None:
        """Send ``raw``'s letter (never raises: see ``settle_letters``)."""
        letter = dead_letter(
            raw,
            reason,
            source_topic=ENGAGEMENTS.name,
            partition=partition,
            offset=offset,
            key=key,
            rejected_by="interests-worker",
        )
        log.warning(
            "dead-lettered %s[%s]@%s: %s", ENGAGEMENTS.name, partition, offset, letter.reason
        )
        self.metrics.dead_letters.inc()
        await self._send_letter(letter, stand_in=False)

    async def settle_letters(self) -> None:
        """Wait until the broker has every letter sent; one it refused is sent again without
        the original's bytes, and if that is refused too the loss is logged and counted."""
        while self._letters:
            letters, self._letters = self._letters, []
            for letter, delivered, stand_in in letters:
                try:
                    await delivered
                except Exception as exc:
                    await self._letter_refused(letter, exc, stand_in)

    async def _send_letter(self, letter: DeadLetter, *, stand_in: bool) -> None:
        try:
            delivered = await self.dead_letters.send(
                key=letter_key(letter), value=letter_bytes(letter)
            )
        except Exception as exc:  # refused by the producer itself
            await self._letter_refused(letter, exc, stand_in)
            return
        self._letters.append((letter, delivered, stand_in))

    async def _letter_refused(
        self, letter: DeadLetter, error: BaseException, stand_in: bool
    ) -> None:
        if not stand_in:
            log_refused(letter, error)
            await self._send_letter(without_original(letter, error), stand_in=True)
            return
        log_lost(letter, error)
        self.metrics.dead_letters_lost.inc()

    async def dead_letter_rejected(
        self, pairs: list[tuple[Any, Any]], rejected: list[tuple[str, str]]
    ) -> None:
        """Dead-letter the events of ``pairs`` (faust event, decoded event) the engine refused,
        with its reason."""
        by_id = dict(rejected)
        for event, ev in pairs:
            reason = by_id.pop(ev.event_id, None) if isinstance(ev, Engagement) else None
            if reason is not None:
                msg = event.message
                await self.dead_letter(event.value, reason, msg.partition, msg.offset, msg.key)


def ackable(events: Sequence[Any], undone: Sequence[Any]) -> list[Any]:
    """The ``events`` (faust ``Event`` objects) that may be acked when ``undone`` were not
    handled: in each partition, those before its first undone event.

    faust commits an offset once the events before it are acked, but passes over a one-offset
    gap (it may be a transaction marker), so acking beyond an undone event could commit it.
    Handled events left unacked come again and are dropped as redeliveries.
    """
    first_undone: dict[Any, int] = {}
    for event in undone:
        tp, offset = event.message.tp, event.message.offset
        if tp not in first_undone or offset < first_undone[tp]:
            first_undone[tp] = offset
    return [
        event
        for event in events
        if event.message.tp not in first_undone
        or event.message.offset < first_undone[event.message.tp]
    ]

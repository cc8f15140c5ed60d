"""When the writers of this process run: wake-ups in batches, written in slices.

The hub queues an event in every matching mailbox; a mailbox whose writer is parked asks this
scheduler to wake it. Wake-ups are batched: the first after a quiet spell happens at the end of
the current loop iteration, and the next batch waits at least ``WAKE_GAP`` seconds after the
previous batch's writes are done. When that batch carried more than one event, events are
arriving faster than they are written: the next one then waits as long as the writes took (at
most ``MAX_WAKE_GAP``). Under load, every event that arrives meanwhile leaves in the same write,
even when events come one per loop iteration (as they do from Redis), and while a batch's writes
take less than ``MAX_WAKE_GAP``, writing takes at most about half of the loop's time, so
publishes keep flowing in. At light load (one event per batch, events further apart than
``WAKE_GAP``) nothing waits.

A batch is woken in slices of about ``WRITE_SLICE``, the loop serving what arrived between two
of them, so a publish, or a round trip to the storage, is not held back for a whole batch of
thousands of writes.

Off asyncio (trio), wake-ups happen at once, without batching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["MAX_WAKE_GAP", "SLICE_CHECK", "WAKE_GAP", "WRITE_SLICE", "WriteScheduler"]

#: Under load, the least and the most time between two batches of writes (seconds).
WAKE_GAP: Final = 0.005
MAX_WAKE_GAP: Final = 0.05
#: How long one slice of a batch holds the loop (seconds), and how many wake-ups go between two
#: looks at the clock.
WRITE_SLICE: Final = 0.00025
SLICE_CHECK: Final = 16


class Wakeable(Protocol):
    """What the scheduler wakes: a mailbox whose writer is parked."""

    def wake(self) -> None:
        """Wake the writer."""


class WriteScheduler:
    """Wake parked writers in batches (see the module docstring).

    Args:
        clock: measures how long writes take (seconds; an injected clock in tests).
        writing: whether writes that the wake-ups started are still under way elsewhere (the
            direct writer of ``fastpath``, which writes in slices of its own): a batch's
            writes are done when it says no.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        writing: Callable[[], bool] | None = None,
    ) -> None:
        self._clock = clock
        self._still_writing = writing
        self._to_wake: list[Wakeable] = []
        self._flush_at: float | None = None  # when the scheduled flush runs, if one is
        self._writes_done = -1.0  # loop time when the writers woken by the last batch had run
        self._writing = 0.0  # seconds the slices of the current batch have spent
        self._sliced_at = 0.0  # when its last slice ended (clock)
        self._events = 0  # events dispatched since the last flush
        self._gap = WAKE_GAP

    @property
    def gap(self) -> float:
        """The least time the next batch waits after the last one's writes (seconds)."""
        return self._gap

    def dispatched(self) -> None:
        """Count an event dispatched to this process's mailboxes (it tells load apart)."""
        self._events += 1

    def wake_soon(self, mailbox: Wakeable) -> None:
        """Wake ``mailbox``'s writer with the next batch."""
        self._to_wake.append(mailbox)
        if self._flush_at is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: wake at once
            self._to_wake = []
            mailbox.wake()
            return
        now = loop.time()
        due = max(now, self._writes_done + self._gap)
        self._flush_at = due
        if due <= now:
            loop.call_soon(self._flush, loop)
        else:
            loop.call_at(due, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        busy, self._events = self._events > 1, 0
        batch, self._to_wake = self._to_wake, []
        self._writing = 0.0
        self._wake_slice(loop, batch, 0, busy)

    def _wake_slice(
        self, loop: asyncio.AbstractEventLoop, batch: list[Wakeable], start: int, busy: bool
    ) -> None:
        """Wake ``batch[start:]``, handing the loop back every ``WRITE_SLICE`` seconds.

        The writers a slice wakes run right after it, before the next slice: the time from one
        slice's start to the next one's is what their writes took.
        """
        clock = self._clock
        began = clock()
        if start:
            self._writing += began - self._sliced_at
        end = stop = len(batch)
        for index in range(start, end):
            batch[index].wake()
            if (
                index % SLICE_CHECK == SLICE_CHECK - 1
                and index + 1 < end
                and clock() - began >= WRITE_SLICE
            ):
                stop = index + 1
                break
        self._sliced_at = clock()
        self._writing += self._sliced_at - began
        if stop < end:
            loop.call_soon(self._wake_slice, loop, batch, stop, busy)
        else:  # the woken writers run next, in this order; this callback runs right after them
            loop.call_soon(self._writes_ran, loop, busy)

    def _writes_ran(self, loop: asyncio.AbstractEventLoop, busy: bool) -> None:
        """The batch's writes are done; ``busy``: it carried more than one event."""
        if self._still_writing is not None and self._still_writing():
            loop.call_soon(self._writes_ran, loop, busy)  # the direct writer's slices go on
            return
        self._writes_done = loop.time()
        took = self._writing + self._clock() - self._sliced_at
        # One event per batch is light load: the next one may leave soon. More, and events are
        # arriving faster than they are written: wait as long as the writes took.
        self._gap = min(MAX_WAKE_GAP, max(WAKE_GAP, took)) if busy else WAKE_GAP
        self._flush_at = None
        if self._to_wake:  # arrived while the writers ran: the next batch, after the gap
            to_wake, self._to_wake = self._to_wake, []
            for mailbox in to_wake:
                self.wake_soon(mailbox)

"""The write scheduler: batched wake-ups, the gap after a busy batch, slices that let the loop in.

Time is an injected clock advanced by the fake writers, so nothing here depends on how fast the
machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from channel_asgi.scheduler import MAX_WAKE_GAP, SLICE_CHECK, WAKE_GAP, WRITE_SLICE, WriteScheduler

from .helpers import eventually


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Writer:
    """A parked writer: being woken "writes" for ``takes`` seconds of the injected clock."""

    def __init__(self, name: str, clock: Clock, log: list[str], takes: float = 0.0) -> None:
        self.name = name
        self._clock = clock
        self._log = log
        self._takes = takes

    def wake(self) -> None:
        self._clock.now += self._takes
        self._log.append(self.name)


async def settle(until: Callable[[], bool]) -> None:
    """Let the loop run the scheduled callbacks until ``until()`` holds (a batch after a gap is
    due some milliseconds of the loop's own clock later)."""
    await eventually(until, interval=0.001)


async def test_a_wake_up_happens_at_the_end_of_the_loop_iteration_and_in_order() -> None:
    """Light load: nothing waits, every writer woken once, in the order asked."""
    clock, log = Clock(), list[str]()
    scheduler = WriteScheduler(clock)
    writers = [Writer(f"w{n}", clock, log) for n in range(3)]
    scheduler.dispatched()
    for writer in writers:
        scheduler.wake_soon(writer)
    assert log == []
    await settle(lambda: len(log) == 3)
    assert log == ["w0", "w1", "w2"]
    await settle(lambda: scheduler.gap == WAKE_GAP)


async def test_after_a_busy_batch_the_next_one_waits_as_long_as_its_writes_took() -> None:
    """Several events in one batch: the gap becomes the batch's writing time, within bounds."""
    clock, log = Clock(), list[str]()
    scheduler = WriteScheduler(clock)
    writers = [Writer(f"w{n}", clock, log, takes=0.01) for n in range(3)]
    for _ in range(3):
        scheduler.dispatched()
    for writer in writers:
        scheduler.wake_soon(writer)
    await settle(lambda: len(log) == 3 and scheduler.gap != WAKE_GAP)
    assert abs(scheduler.gap - 0.03) < 1e-9

    slow = [Writer(f"s{n}", clock, log, takes=0.05) for n in range(3)]
    for _ in range(2):
        scheduler.dispatched()
    for writer in slow:
        scheduler.wake_soon(writer)
    await settle(lambda: len(log) == 6 and scheduler.gap == MAX_WAKE_GAP)

    scheduler.dispatched()  # one event: light load again
    scheduler.wake_soon(writers[0])
    await settle(lambda: len(log) == 7 and scheduler.gap == WAKE_GAP)


async def test_a_long_batch_is_woken_in_slices_with_the_loop_served_in_between() -> None:
    """After a slice's worth of writing, what the loop had waiting runs before the rest."""
    clock, log = Clock(), list[str]()
    scheduler = WriteScheduler(clock)
    takes = 2 * WRITE_SLICE / SLICE_CHECK  # SLICE_CHECK writers fill more than a slice
    writers = [Writer(f"w{n}", clock, log, takes) for n in range(2 * SLICE_CHECK)]
    for writer in writers:
        scheduler.wake_soon(writer)
    loop = asyncio.get_running_loop()
    loop.call_soon(log.append, "loop")  # queued right behind the first slice
    await settle(lambda: len(log) == len(writers) + 1)
    assert log.index("loop") == SLICE_CHECK
    assert [name for name in log if name != "loop"] == [w.name for w in writers]


async def test_what_arrives_while_a_batch_is_written_goes_in_the_next_one() -> None:
    """A wake-up asked while the batch's writers run is not lost: it leaves after the gap."""
    clock, log = Clock(), list[str]()
    scheduler = WriteScheduler(clock)
    late = Writer("late", clock, log)

    class Chain(Writer):
        def wake(self) -> None:
            super().wake()
            scheduler.wake_soon(late)

    scheduler.wake_soon(Chain("first", clock, log))
    await settle(lambda: log == ["first"])
    await settle(lambda: log == ["first", "late"])


def test_off_asyncio_a_wake_up_happens_at_once() -> None:
    """Without a running asyncio loop (trio), there is no batching."""
    clock, log = Clock(), list[str]()
    scheduler = WriteScheduler(clock)
    scheduler.wake_soon(Writer("w", clock, log))
    assert log == ["w"]


async def test_a_batch_lasts_until_the_writes_it_started_elsewhere_are_done() -> None:
    """With direct writes (``writing`` says they go on), the gap counts their time too."""
    clock, log = Clock(), list[str]()
    pending = [3]  # the direct writer's slices still to write

    def writing() -> bool:
        if pending[0]:
            pending[0] -= 1
            clock.now += 0.01  # each slice of direct writes takes 10 ms
            return True
        return False

    scheduler = WriteScheduler(clock, writing)
    writers = [Writer(f"w{n}", clock, log) for n in range(2)]
    for _ in range(2):
        scheduler.dispatched()
    for writer in writers:
        scheduler.wake_soon(writer)
    await settle(lambda: not pending[0] and scheduler.gap != WAKE_GAP)
    assert abs(scheduler.gap - 0.03) < 1e-9

"""A connection's mailbox: bounded, never awaits on put, one taker, closes for a reason."""

from __future__ import annotations

import anyio

from channel_asgi.connection import Framing
from channel_asgi.mailbox import SEND_HISTORY, Close, Mailbox, put_many


def mailbox(limit: int = 100, wake_soon: object = None) -> Mailbox:
    return Mailbox("ch", "c1", "u1", Framing.SSE, limit, wake_soon)  # type: ignore[arg-type]


async def test_take_returns_everything_queued_at_once_in_order() -> None:
    """A burst of events is one batch for the writer."""
    box = mailbox()
    assert box.put(b"a") and box.put(b"b")
    assert await box.take() == [b"a", b"b"]
    assert box.pending() == []


async def test_a_parked_writer_is_woken_through_wake_soon_once_per_batch() -> None:
    """The first put asks for a wake-up; more puts before it happens ask nothing more."""
    asked: list[Mailbox] = []
    box = mailbox(wake_soon=asked.append)
    taken: list[object] = []

    async def writer() -> None:
        taken.extend(await box.take())

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        await anyio.wait_all_tasks_blocked()
        box.put(b"a")
        box.put(b"b")
        assert asked == [box]
        box.wake()
    assert taken == [b"a", b"b"]


async def test_overflow_reports_false_and_close_slow_empties_and_interrupts() -> None:
    """Past the byte limit put says so; closing it as slow drops what waits and interrupts."""
    box = mailbox(limit=10)
    interrupted: list[bool] = []
    box.interrupt_with(lambda: interrupted.append(True))
    assert box.put(b"x" * 10)
    assert not box.put(b"y")
    box.close(Close.SLOW)
    assert (box.closed, box.pending(), interrupted) == (Close.SLOW, [], [True])
    assert await box.take() == []
    assert box.put(b"late")  # a closed mailbox takes nothing more, and says it is fine
    assert box.pending() == []


async def test_a_mailbox_closed_at_the_end_of_a_channel_keeps_its_last_events() -> None:
    """END (and SHUTDOWN) let the writer send what is queued before it stops."""
    box = mailbox()
    box.put(b"end")
    box.close(Close.END)
    box.close(Close.GONE)  # the first reason stays
    assert box.closed is Close.END
    assert await box.take() == [b"end"]
    assert await box.take() == []


async def test_a_history_request_is_queued_once_and_does_not_count() -> None:
    """Requests made before the writer ran are answered by one reply; they never overflow."""
    box = mailbox(limit=1)
    box.request_history()
    box.request_history()
    box.put_reply("ack")
    assert box.pending() == [SEND_HISTORY, "ack"]
    assert await box.take() == [SEND_HISTORY, "ack"]
    box.request_history()
    assert box.pending() == [SEND_HISTORY]


async def test_closing_wakes_a_parked_writer_with_nothing() -> None:
    """A writer waiting on an empty mailbox returns an empty batch when it closes."""
    box = mailbox()
    result: list[list[object]] = []

    async def writer() -> None:
        result.append(await box.take())

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        await anyio.wait_all_tasks_blocked()
        box.close(Close.GONE)
    assert result == [[]]


def test_beat_queues_a_ping_after_enough_quiet_ticks() -> None:
    """Three quiet ticks, then the ping; anything queued restarts the count."""
    box = mailbox()
    for _ in range(3):
        box.beat(b": ping\n\n", 3)
    assert box.pending() == []
    box.beat(b": ping\n\n", 3)
    assert box.pending() == [b": ping\n\n"]
    box.put(b"event")
    box.beat(b": ping\n\n", 3)
    assert box.pending()[-1] == b"event"


def test_put_many_queues_one_object_everywhere_and_returns_the_overflowed() -> None:
    """The hub's fan-out: the same frame in every open mailbox; the full ones are reported."""
    small, roomy, shut = mailbox(limit=3), mailbox(limit=100), mailbox()
    shut.close(Close.END)
    frame = b"abcd"
    assert put_many([small, roomy, shut], frame) == [small]
    assert roomy.pending()[0] is frame
    assert small.pending() == [frame]  # queued, then closed by the hub as too slow
    assert shut.pending() == []

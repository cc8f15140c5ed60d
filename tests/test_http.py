"""channel_asgi.http: reading a publish body, within its size and its time."""

from __future__ import annotations

import anyio
import pytest

from channel_asgi.errors import PayloadTooLarge, RequestTimeout
from channel_asgi.http import BodyDeadlines, read_body

from .helpers import FakeClock


async def _never() -> dict[str, object]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def test_a_body_past_its_deadline_is_408_at_the_next_sweep(clock: FakeClock) -> None:
    """A read is cancelled into a 408 by the first sweep after its deadline, not before."""
    deadlines = BodyDeadlines(5.0)
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await deadlines.read({}, _never, 100)
        except RequestTimeout as exc:
            outcome.append(exc)

    deadlines.sweep()  # nothing to do yet
    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.0)
        deadlines.sweep()  # not overdue yet
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        clock.advance(1.5)
        deadlines.sweep()
    assert len(outcome) == 1 and "body_timeout" in str(outcome[0])
    deadlines.sweep()  # the read is forgotten: nothing left to cancel


async def test_a_read_cancelled_for_another_reason_stays_cancelled() -> None:
    deadlines = BodyDeadlines(60.0)
    with anyio.move_on_after(0) as scope:  # the caller gives up (a client that left)
        await deadlines.read({}, _never, 100)
    assert scope.cancelled_caught


async def test_a_body_over_the_limit_in_one_message_is_413() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"x" * 11, "more_body": False}

    with pytest.raises(PayloadTooLarge):
        await read_body({}, receive, 10)

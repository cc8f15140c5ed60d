"""What MemoryStorage promises beyond the conformance suite."""

from __future__ import annotations

import anyio

from channel_asgi.storage import MemoryStorage


async def test_a_later_process_does_not_recognise_an_earlier_ones_ids() -> None:
    """A browser that resumes against a restarted process gets ``recovered`` false, not a
    replay from a wrong point, although the new process numbers its events afresh."""
    before = MemoryStorage()
    kept = [await before.append("c", b'{"n":%d}' % n, keep=10) for n in range(3)]
    await anyio.sleep(0.002)  # ids carry the storage's start time in milliseconds
    after = MemoryStorage()
    fresh = [await after.append("c", b'{"n":%d}' % n, keep=10) for n in range(5)]
    assert not set(kept) & set(fresh)
    history = await after.history("c", after=kept[1])
    assert history.recovered is False
    assert [event.id for event in history.events] == fresh

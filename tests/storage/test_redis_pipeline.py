"""RedisStorage's automatic pipelining: bursts share round trips, order and results hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest
import redis.asyncio

from channel_asgi.storage import RedisStorage, StorageChannelClosed
from channel_asgi.storage.conformance import Running, running


@pytest.fixture
async def counted(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Running, list[str]]]:
    """A running RedisStorage, and the name of every command it sent in a pipeline."""
    sent: list[str] = []

    class CountingConnection(redis.asyncio.Connection):
        def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
            listed = [tuple(command) for command in commands]
            sent.extend(str(command[0]) for command in listed)
            return super().pack_commands(listed)

    client = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        async with running(RedisStorage(prefix=redis_prefix, client=client)) as live:
            yield live, sent
    finally:
        await client.aclose()


async def test_a_burst_of_appends_is_one_script_call_and_keeps_its_order(
    counted: tuple[Running, list[str]],
) -> None:
    live, sent = counted
    storage = live.storage
    await storage.listen("burst")
    await storage.append("burst", b'{"n":-1}', keep=100)  # loads the script
    sent.clear()
    ids: dict[int, str] = {}

    async def append(n: int) -> None:
        ids[n] = await storage.append("burst", b'{"n":%d}' % n, keep=100)

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(append, n)
    assert sent.count("EVALSHA") < 20, sent  # shared: at most a few pipelines
    in_order = [ids[n] for n in range(20)]
    assert in_order == sorted(in_order, key=lambda i: tuple(map(int, i.split("-"))))
    history = await storage.history("burst")
    assert [event.id for event in history.events][-20:] == in_order
    delivered = await live.inbox.wait_for(21, "burst")
    assert [d.id for d in delivered][1:] == in_order
    assert [d.payload for d in delivered][1:] == [b'{"n":%d}' % n for n in range(20)]


async def test_appends_to_other_channels_and_other_calls_in_one_pipeline(
    counted: tuple[Running, list[str]],
) -> None:
    """Interleaved channels keep their own order; a closed channel refuses only its appends."""
    live, _ = counted
    storage = live.storage
    await storage.close_channel("shut", b'{"type":"end"}')
    results: dict[str, Any] = {}

    async def append(channel: str, n: int) -> None:
        try:
            results[f"{channel}{n}"] = await storage.append(channel, b"%d" % n, keep=10)
        except Exception as exc:
            results[f"{channel}{n}"] = exc

    async def count() -> None:
        results["viewers"] = await storage.viewer_count("a")

    async with anyio.create_task_group() as group:
        for n in range(3):
            for channel in ("a", "b", "shut"):
                group.start_soon(append, channel, n)
        group.start_soon(count)
    for channel in ("a", "b"):
        history = await storage.history(channel)
        assert [event.payload for event in history.events] == [b"0", b"1", b"2"]
        assert [event.id for event in history.events] == [
            results[f"{channel}{n}"] for n in range(3)
        ]
    assert all(isinstance(results[f"shut{n}"], StorageChannelClosed) for n in range(3))
    assert results["viewers"] == 0


async def test_an_archived_broadcast_is_one_script_call_and_a_burst_is_merged(
    counted: tuple[Running, list[str]],
) -> None:
    """Archiving adds no round trip: history, archive and publish are one EVALSHA."""
    live, sent = counted
    storage = live.storage
    await storage.append("vod", b'{"n":-1}', keep=10, archive=100, timestamp=0.0)  # loads it
    sent.clear()
    ids = {0: await storage.append("vod", b'{"n":0}', keep=10, archive=100, timestamp=5.0)}
    assert sent == ["EVALSHA"]
    sent.clear()

    async def append(n: int) -> None:
        stamp = None if n == 3 else float(10 - n)
        ids[n] = await storage.append("vod", b'{"n":%d}' % n, keep=10, archive=100, timestamp=stamp)

    async with anyio.create_task_group() as group:
        for n in range(1, 8):
            group.start_soon(append, n)
    assert sent.count("EVALSHA") < 7, sent  # merged, timestamps and all
    page = await storage.archive_range("vod", start=1.0)  # n=3 has no timestamp
    by_time = [7, 6, 0, 5, 4, 2, 1]  # media time 3, 4, 5, 5 (n=0 published first), 6, 8, 9
    assert [e.id for e in page.events] == [ids[n] for n in by_time]

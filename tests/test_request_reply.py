"""A ``request`` reply is read from the history page by page, as the writer takes it."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from channel_asgi import ChannelApp
from channel_asgi.engine import REQUEST_CHUNK_BYTES, REQUEST_PAGE_BYTES
from channel_asgi.mailbox import REQUEST, Subscriber, Transport
from channel_asgi.storage.base import History
from channel_asgi.storage.memory import MemoryStorage

SECRET = "r" * 40


class CountingStorage(MemoryStorage):
    """Records what each history read returned."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int | None, int]] = []  # (limit, bytes returned)

    async def history(self, channel: str, **options: Any) -> History:
        history = await super().history(channel, **options)
        self.reads.append((options.get("limit"), sum(len(e.payload) for e in history.events)))
        return history


async def test_the_reply_reads_one_page_per_chunk_and_covers_the_history_once() -> None:
    storage = CountingStorage()
    channels = ChannelApp(secret=SECRET, storage=storage, history_size=400)
    async with channels:
        sent = [await channels.publish("big", {"n": n, "pad": "z" * 20_000}) for n in range(400)]
        storage.reads.clear()
        reply = channels.engine.request_reply("big", "u1")
        first = await reply.__anext__()
        assert len(first) <= REQUEST_CHUNK_BYTES + 1024
        assert len(storage.reads) <= 2  # lazy: nowhere near the 8 MB of history yet
        events = [first, *[event async for event in reply]]
        ids = [item["id"] for event in events for item in json.loads(event)["message"]]
        assert ids == sent  # everything, once, in order
        assert all(size <= 2 * REQUEST_PAGE_BYTES for _, size in storage.reads), storage.reads
        assert all(len(event) <= REQUEST_CHUNK_BYTES + 1024 for event in events)


async def test_the_reply_stops_at_the_history_size_and_an_empty_one_is_one_event() -> None:
    channels = ChannelApp(secret=SECRET, history_size=5)
    async with channels:
        empty = [event async for event in channels.engine.request_reply("none", "u1")]
        assert [msgspec.json.decode(event)["message"] for event in empty] == [[]]
        for n in range(12):
            await channels.publish("c", n)
        events = [event async for event in channels.engine.request_reply("c", "u1")]
        messages = [item["message"] for e in events for item in json.loads(e)["message"]]
        assert messages == list(range(7, 12))


def test_a_request_already_queued_is_not_queued_again() -> None:
    subscriber = Subscriber("c", "conn", "u1", "sse", 1024)
    for _ in range(50):
        subscriber.put_control(REQUEST)
    subscriber.put(b"event")
    subscriber.put_control(REQUEST)
    assert subscriber.drain() == [REQUEST, b"event"]
    subscriber.put_control(REQUEST)
    assert subscriber.drain() == [REQUEST]


async def test_a_paged_replay_meets_the_live_backlog_without_gap_or_repeat() -> None:
    """A resume's replay is read a page at a time, while live events are collected; it stops
    where they begin, and going live delivers them: every broadcast once, in order."""
    storage = CountingStorage()
    channels = ChannelApp(secret=SECRET, storage=storage, history_size=100)
    async with channels:
        engine = channels.engine
        ids = [await channels.publish("c", {"n": n, "pad": "p" * 30_000}) for n in range(40)]
        storage.reads.clear()
        session = await engine.open_session(
            "c", "u1", anonymous=True, transport=Transport.SSE, last_event_id=ids[0]
        )
        assert len(storage.reads) == 1  # the first page only, before anything is written
        later = [await channels.publish("c", {"n": n}) for n in range(40, 45)]  # live: backlog
        replayed: list[str] = []
        async for page in engine.replay(session):
            replayed += [event.id for event in page]
        assert replayed == ids[1:]
        assert len(storage.reads) > 2  # paged: 16 events, then about 256 KiB at a time
        await engine.go_live(session)
        frames = b"".join(item for item in session.subscriber.drain() if isinstance(item, bytes))
        live = [line[4:].decode() for line in frames.split(b"\n") if line.startswith(b"id: ")]
        assert live == later
        await engine.end_session(session)

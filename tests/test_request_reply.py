"""A ``request`` reply is read from the history page by page, as the writer takes it."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import anyio
import msgspec

from channel_asgi import ChannelApp
from channel_asgi.config import Settings
from channel_asgi.connection import Framing
from channel_asgi.engine import Engine, Hooks
from channel_asgi.history import REQUEST_CHUNK_BYTES, REQUEST_PAGE_BYTES, HistoryReader
from channel_asgi.hub import Hub
from channel_asgi.scheduler import WriteScheduler
from channel_asgi.storage.base import History
from channel_asgi.storage.memory import MemoryStorage
from channel_asgi.tokens import TokenSigner

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
        reply = HistoryReader(storage, lambda _: 400, None).request_reply("big", "u1")
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
    reader = HistoryReader(channels.storage, lambda _: 5, None)
    async with channels:
        empty = [event async for event in reader.request_reply("none", "u1")]
        assert [msgspec.json.decode(event)["message"] for event in empty] == [[]]
        for n in range(12):
            await channels.publish("c", n)
        events = [event async for event in reader.request_reply("c", "u1")]
        messages = [item["message"] for e in events for item in json.loads(e)["message"]]
        assert messages == list(range(7, 12))


async def test_a_paged_replay_meets_the_live_backlog_without_gap_or_repeat() -> None:
    """A resume's replay is read a page at a time, while live events are collected; it stops
    where they begin, and going live delivers them: every broadcast once, in order."""
    storage = CountingStorage()
    hub = Hub(storage, WriteScheduler())
    engine = Engine(
        Settings(history_size=100),
        storage,
        hub,
        TokenSigner(SECRET, 60.0),
        Hooks(),
        history_size=lambda _: 100,
    )
    async with anyio.create_task_group() as group:
        await group.start(storage.run, hub.dispatch)
        publish = partial(engine.broadcast, "c")
        ids = [await publish(raw({"n": n, "pad": "p" * 30_000})) for n in range(40)]
        storage.reads.clear()
        mailbox, opening = await engine.connect(
            "c", "u1", anonymous=True, framing=Framing.SSE, last_event_id=ids[0]
        )
        assert len(storage.reads) == 1  # the first page only, before anything is written
        later = [await publish(raw({"n": n})) for n in range(40, 45)]  # live: backlog
        replayed: list[str] = []
        async for page in engine.replay(mailbox, opening):
            replayed += [event.id for event in page]
        assert replayed == ids[1:]
        assert len(storage.reads) > 2  # paged: 16 events, then about 256 KiB at a time
        await engine.go_live(mailbox, opening)
        frames = b"".join(item for item in await mailbox.take() if isinstance(item, bytes))
        live = [line[4:].decode() for line in frames.split(b"\n") if line.startswith(b"id: ")]
        assert live == later
        await engine.disconnect(mailbox, opening)
        assert hub.listening("c") == 0
        group.cancel_scope.cancel()


def raw(message: Any) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(message))

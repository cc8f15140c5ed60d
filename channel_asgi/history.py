"""Reading a channel's retained broadcasts: resume replays and ``request`` replies, page by page.

Both are read from the storage a page at a time, each page once the previous one is written, so
a reader that does not keep up holds one page in memory, never the whole history; and both stop
after the channel's ``history_size`` broadcasts, so a busy channel cannot keep a slow reader's
pages coming for ever.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Final

from .protocol import encode_event, with_id
from .storage.base import ArchivePage, History, Storage, StoredEvent

__all__ = [
    "FIRST_PAGE",
    "REPLAY_WINDOW",
    "REQUEST_CHUNK_BYTES",
    "REQUEST_PAGE_BYTES",
    "HistoryReader",
    "Replay",
    "next_page_size",
    "request_events",
]

#: A ``request`` reply is split into events whose ``message`` array stays under this size.
REQUEST_CHUNK_BYTES: Final = 256 * 1024
#: How many of a replay's newest ids a connection keeps until live deliveries pass them.
REPLAY_WINDOW: Final = 64
#: History is read in pages of about this many bytes.
REQUEST_PAGE_BYTES: Final = 256 * 1024
#: Broadcasts in the first page read, before their size is known.
FIRST_PAGE: Final = 16
_MAX_PAGE: Final = 1024


class Replay:
    """A resume's replay: the first page read, the rest still to read, and what was written.

    Args:
        events: the first page (oldest first), not written yet.
        pages: the rest of the pages, not read yet (None: there is no more).
    """

    __slots__ = ("_events", "_pages", "_written")

    def __init__(
        self,
        events: list[StoredEvent] | None = None,
        pages: AsyncGenerator[History, None] | None = None,
    ) -> None:
        self._events = events or []
        self._pages = pages
        self._written: list[str] = []

    def take_written(self) -> list[str]:
        """Return the ids of the newest ``REPLAY_WINDOW`` broadcasts written, and forget them."""
        written, self._written = self._written, []
        return written

    async def aclose(self) -> None:
        """Stop reading the pages not read yet (a replay that will not be written)."""
        pages, self._pages = self._pages, None
        if pages is not None:
            await pages.aclose()


class HistoryReader:
    """Read retained broadcasts for one app.

    Args:
        storage: where they are retained.
        history_size: how many broadcasts a channel retains.
        ttl: seconds a broadcast is retained, or None.
    """

    def __init__(
        self, storage: Storage, history_size: Callable[[str], int], ttl: float | None
    ) -> None:
        self._storage = storage
        self._history_size = history_size
        self._ttl = ttl

    async def pages(self, channel: str, after: str | None = None) -> AsyncGenerator[History, None]:
        """Read the retained broadcasts after ``after`` a page at a time, oldest first.

        The first page holds :data:`FIRST_PAGE` broadcasts (their size is not known yet), the
        next about :data:`REQUEST_PAGE_BYTES` each; at most the channel's ``history_size`` in
        all. The first page's ``recovered`` is the resume's. A page's last id evicted meanwhile
        (the ring only drops its oldest) leaves only newer broadcasts: the next page starts at
        the oldest retained, without repeats.
        """
        budget = self._history_size(channel)
        page = FIRST_PAGE
        sent = 0
        while True:  # at least one read: a resume needs its ``recovered`` even with no history
            want = min(page, budget - sent)
            history = await self._storage.history(channel, after=after, ttl=self._ttl, limit=want)
            yield history
            events = history.events
            sent += len(events)
            if len(events) < want or sent >= budget:
                return
            after = events[-1].id
            page = next_page_size(events)

    async def replay(
        self, replay: Replay, stop: Callable[[], frozenset[str] | None]
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """Yield a resume's replay a page at a time, reading each page once the last is written.

        Args:
            replay: what was read when the connection opened.
            stop: returns the ids of the live broadcasts collected since the connection
                attached (the replay stops at the first of them: they are delivered live), or
                None once the connection has closed.
        """
        events, replay._events = replay._events, []
        pages, replay._pages = replay._pages, None
        try:
            while (live := stop()) is not None:
                events, reached = _before(events, live)
                if events:
                    # Keep the newest ids: a live delivery of a replayed broadcast is one
                    # published just before its page was read, so a short window covers it.
                    replay._written = [*replay._written, *(e.id for e in events)][-REPLAY_WINDOW:]
                    yield events
                if reached or pages is None:
                    return
                history = await anext(pages, None)
                if history is None:
                    return
                events = history.events
        finally:
            if pages is not None:
                await pages.aclose()

    async def request_reply(self, channel: str, user_id: str) -> AsyncGenerator[bytes, None]:
        """Yield the ``request`` reply for ``channel``: encoded events, each array <= 256 KiB.

        Each event is yielded as soon as it is built, so a reply holds about one page in memory
        however long the history is, and a writer that awaits its client between events (flow
        control) never buffers more. An empty history is one event with an empty array.
        """
        async with contextlib.aclosing(self.pages(channel)) as pages:
            async for event in request_events(channel, user_id, pages):
                yield event


def next_page_size(events: list[StoredEvent]) -> int:
    """How many broadcasts the next page should hold: about ``REQUEST_PAGE_BYTES`` of them.

    Judged by the size of ``events``, the last page read (not empty).
    """
    average = max(1, sum(len(event.payload) for event in events) // len(events))
    return max(1, min(_MAX_PAGE, REQUEST_PAGE_BYTES // average))


async def request_events(
    channel: str, user_id: str, pages: AsyncIterator[History | ArchivePage]
) -> AsyncGenerator[bytes, None]:
    """Yield the ``request`` events holding the broadcasts of ``pages``, each array <= 256 KiB.

    Each event is yielded as soon as it is full, before the next page is read; no page at all
    is one event with an empty array. The caller closes ``pages``.
    """
    chunk: list[bytes] = []
    size = 2
    async for page in pages:
        for event in page.events:
            item = with_id(event.payload, event.id)
            grow = len(item) + (1 if chunk else 0)
            if chunk and size + grow > REQUEST_CHUNK_BYTES:
                yield _request_event(channel, user_id, chunk)
                chunk, size, grow = [], 2, len(item)
            chunk.append(item)
            size += grow
    yield _request_event(channel, user_id, chunk)


def _before(events: list[StoredEvent], live: frozenset[str]) -> tuple[list[StoredEvent], bool]:
    """The ``events`` before the first one ``live`` holds, and whether it held one."""
    if not live:
        return events, False
    for index, event in enumerate(events):
        if event.id in live:
            return events[:index], True
    return events, False


def _request_event(channel: str, user_id: str, items: list[bytes]) -> bytes:
    return encode_event("request", channel, b"[" + b",".join(items) + b"]", to_user_id=user_id)

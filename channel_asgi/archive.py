"""Reading a channel's archive by media time: range requests and ``channels.history()``.

The archive is kept by the storage (``storage.base.Archive``); ``Engine.broadcast`` fills it.
Its readers share one :class:`ArchiveReader`:

- a ``request`` publish with a range (``ranges``): checked where it is published (an unknown
  ``after`` is a 400 there, one cheap read), then read in the process that holds the requesting
  connection, by its writer, a page at a time as the client takes them, like the live history's
  ``request`` reply (``history.request_events``: arrays of at most 256 KiB). If ``after`` was
  evicted between the check and the read, the reply is empty;
- ``channels.history()``: one page as decoded envelopes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

import msgspec

from .errors import BadRequest
from .history import FIRST_PAGE, next_page_size, request_events
from .protocol import Envelope, decode_envelope, skip_undecodable, with_id
from .ranges import MediaRange
from .storage.base import ArchivePage, Storage

__all__ = ["ArchiveReader"]

logger = logging.getLogger("channel_asgi")


class ArchiveReader:
    """Read one app's archives.

    Args:
        storage: where the archives are kept.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def page(self, channel: str, wanted: MediaRange, *, field: str | None) -> ArchivePage:
        """Return the page ``wanted`` asks for, in one read.

        Args:
            field: the field ``after`` came in (``$.message.after``), named in a refusal; None:
                the query parameter ``after``.

        Raises:
            BadRequest: ``after`` is not an event of the channel's archive.
            StorageError: the storage failed.
        """
        try:
            return await self._storage.archive_range(
                channel,
                start=wanted.start,
                end=wanted.end,
                limit=wanted.limit,
                after=wanted.after,
            )
        except ValueError:  # the range itself was checked: only ``after`` is left to refuse
            why = (
                f"{wanted.after!r} is not an event of this channel's archive (evicted, or never "
                "archived); start again from the timestamp of the last broadcast you have"
            )
            if field is None:
                raise BadRequest(f"Query parameter `after`: {why}") from None
            raise BadRequest(f"`after`: {why} - at `{field}`") from None

    async def check(self, channel: str, wanted: MediaRange) -> None:
        """Refuse a range request whose ``after`` the archive does not hold, before it is sent.

        Raises:
            BadRequest: ``after`` is unknown (named ``$.message.after``).
            StorageError: the storage failed.
        """
        if wanted.after is not None:
            probe = MediaRange(wanted.start, wanted.end, 1, wanted.after)
            await self.page(channel, probe, field="$.message.after")

    async def envelopes(self, channel: str, wanted: MediaRange) -> list[Envelope]:
        """Return the page ``wanted`` asks for as decoded envelopes (``channels.history()``).

        An archived broadcast that cannot be decoded is logged and left out (SPEC 6.1).

        Raises:
            ValueError: ``after`` is not an event of the channel's archive.
            StorageError: the storage failed.
        """
        page = await self._storage.archive_range(
            channel, start=wanted.start, end=wanted.end, limit=wanted.limit, after=wanted.after
        )
        found: list[Envelope] = []
        for event in page.events:
            data = with_id(event.payload, event.id)
            try:
                found.append(decode_envelope(data))
            except (msgspec.DecodeError, RecursionError) as exc:
                skip_undecodable(logger, channel, data, exc, where=" of the archive")
        return found

    async def request_reply(
        self, channel: str, user_id: str, wanted: MediaRange
    ) -> AsyncGenerator[bytes, None]:
        """Yield the ``request`` reply to a range request: encoded events, arrays <= 256 KiB.

        The range is read a page at a time, each page once the events before it are written,
        at most ``wanted.limit`` broadcasts in all. No broadcast in the range is one event with
        an empty array.
        """
        async with contextlib.aclosing(self._pages(channel, wanted)) as pages:
            async for event in request_events(channel, user_id, pages):
                yield event

    async def _pages(self, channel: str, wanted: MediaRange) -> AsyncGenerator[ArchivePage, None]:
        left = wanted.limit
        size = FIRST_PAGE
        after = wanted.after
        while True:
            try:
                page = await self._storage.archive_range(
                    channel, start=wanted.start, end=wanted.end, limit=min(size, left), after=after
                )
            except ValueError:  # ``after`` was evicted since it was checked (or read)
                logger.info(
                    "Range request on %r: %r left the archive before it was read; the reply "
                    "ends there",
                    channel,
                    after,
                )
                return
            yield page
            left -= len(page.events)
            if not page.more or not page.events or left <= 0:
                return
            after = page.events[-1].id
            size = next_page_size(page.events)

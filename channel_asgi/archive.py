"""Reading a channel's archive by media time: range requests, ``GET /history``, ``history()``.

The archive is kept by the storage (``storage.base.Archive``); ``Engine.broadcast`` fills it.
Three readers, one :class:`ArchiveReader`:

- a ``request`` publish with a range (``ranges``): checked where it is published (an unknown
  ``after`` is a 400 there, one cheap read), then read in the process that holds the requesting
  connection, by its writer, a page at a time as the client takes them, like the live history's
  ``request`` reply (``history.request_events``: arrays of at most 256 KiB). If ``after`` was
  evicted between the check and the read, the reply is empty;
- ``GET {prefix}/history/{channel}`` (:class:`HistoryRoute`): one page as JSON, with the id to
  continue from. It is authorised as a subscribe is (identity token, ``Auth``, patterns), then
  asks the history permission (``Access.authorize_history``: 403 for ``history=False`` patterns
  and where ``request`` is not allowed). A closed channel's page can be cached (``Cache-Control``
  with :data:`CLOSED_MAX_AGE`: the archive of a stream that ended changes only when a moderator
  deletes a message); an open channel's must be revalidated (``no-cache``). Either way the
  ``ETag`` is a hash of the body, and a matching ``If-None-Match`` is answered 304;
- ``channels.history()``: one page as decoded envelopes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator
from typing import Final

import msgspec

from .access import Access
from .auth import Request
from .errors import BadRequest
from .history import FIRST_PAGE, next_page_size, request_events
from .http import Headers, Receive, Scope, Send, header, send_json
from .moderation import Moderator
from .protocol import Envelope, decode_envelope, encode, skip_undecodable, with_id
from .ranges import MediaRange, range_of_query
from .storage.base import ArchivePage, Storage

__all__ = ["CLOSED_MAX_AGE", "ArchiveReader", "HistoryRoute"]

logger = logging.getLogger("channel_asgi")

#: Seconds a shared cache or a browser may keep a closed channel's ``GET /history`` page.
CLOSED_MAX_AGE: Final = 60


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


class _HistoryReply(msgspec.Struct):
    """The JSON of ``GET /history/{channel}``."""

    code: int
    message: str
    events: list[msgspec.Raw]
    next: str | None


class HistoryRoute:
    """Serve ``GET {prefix}/history/{channel}`` for one app.

    Args:
        storage: the app's storage.
        archive: reads its archives.
        access: identity and authorisation.
        moderator: refuses a banned reader, as a subscribe does.
    """

    methods: Final = ("GET", "OPTIONS")

    def __init__(
        self, storage: Storage, archive: ArchiveReader, access: Access, moderator: Moderator
    ) -> None:
        self._storage = storage
        self._archive = archive
        self._access = access
        self._moderator = moderator

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Check the query and the reader, then answer one page of the archive.

        Raises:
            BadRequest: a bad ``from``, ``to``, ``limit`` or ``after`` (400, naming it).
            Unauthorized: a bad identity token, or an anonymous reader where one is not allowed.
            Forbidden: the reader may not subscribe to the channel or read its history, or is
                banned from it.
            StorageError: the storage failed (503).
        """
        wanted = range_of_query(Request(scope).query_params)
        access = self._access
        user_id, anonymous = await access.identify(scope, channel)
        if access.decides:
            await access.authorize_history(None if anonymous else user_id, channel)
        if not anonymous:  # an anonymous id is new on each request: no ban can be on it
            await self._moderator.refuse_banned(channel, user_id)
        closed = await self._storage.is_closed(channel)
        page = await self._archive.page(channel, wanted, field=None)
        events = [msgspec.Raw(with_id(event.payload, event.id)) for event in page.events]
        last = page.events[-1].id if page.more and page.events else None
        count = len(events)
        message = f"{count} archived broadcast{'' if count == 1 else 's'}"
        body = encode(_HistoryReply(200, message, events, last))
        etag = b'"%s"' % hashlib.blake2b(body, digest_size=16).hexdigest().encode()
        if not closed:
            cache = b"no-cache"  # an open channel's archive grows: ask each time (304s are cheap)
        else:  # a reply that depends on who asks must stay out of shared caches
            scope_ = b"private" if access.decides else b"public"
            cache = b"%s, max-age=%d" % (scope_, CLOSED_MAX_AGE)
        caching = [(b"cache-control", cache), (b"etag", etag), *reply_headers]
        if _matches(header(headers, b"if-none-match"), etag.decode()):
            await send({"type": "http.response.start", "status": 304, "headers": caching})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_json(send, 200, body, caching)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weakly, as RFC 9110 asks of a GET), or is ``*``."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False

"""The ``id:`` of a stream of several channels: the last broadcast seen on each channel.

A browser keeps one ``lastEventId`` per ``EventSource`` and sends it back as ``Last-Event-ID``, so
the ``id:`` line of a stream of several channels must say where *every* channel stands. It is a
list of ``channel=event id`` pairs joined by ``,``::

    id: news=1718000000000-7,chats/42=1718000000123-0

Channel names never hold ``=`` or ``,``; an event id that does (a third-party storage's) has
``%``, ``,`` and ``=`` percent-encoded. The list holds every channel of the stream that has
delivered a broadcast (or that the resume named), in the order first seen; a channel removed from
the stream leaves it. A single-channel stream keeps its plain ids.

:class:`Cursors` keeps the pairs pre-encoded, so writing an event's ``id:`` line is one dict store
and one ``bytes.join``: its cost grows with the channels the stream has seen broadcasts on, which
``max_channels_per_connection`` bounds.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, unquote

__all__ = ["Cursors", "parse_cursors"]

_ESCAPED: Final = frozenset("%,=")


def _encode_id(event_id: str) -> str:
    if _ESCAPED.isdisjoint(event_id):
        return event_id
    return quote(event_id, safe="".join(chr(c) for c in range(33, 127) if chr(c) not in _ESCAPED))


def parse_cursors(value: str | None) -> dict[str, str]:
    """Return ``{channel: event id}`` from a ``Last-Event-ID`` of a stream of several channels.

    A value that is not such a list (a plain id of a single-channel stream, or garbage) names no
    channel: the stream starts each channel as a fresh subscribe does. Malformed pairs are
    skipped, never an error: the header comes back from the browser as the server wrote it.
    """
    cursors: dict[str, str] = {}
    if not value or "=" not in value:
        return cursors
    for pair in value.split(","):
        channel, equals, event_id = pair.strip().partition("=")
        if equals and channel and event_id:
            cursors[channel] = unquote(event_id) if "%" in event_id else event_id
    return cursors


class Cursors:
    """Where each channel of a stream stands, and the ``id:`` line that says it.

    Args:
        start: the cursors a resume named (``parse_cursors``), or none.
    """

    __slots__ = ("_ids", "_parts")

    def __init__(self, start: dict[str, str] | None = None) -> None:
        self._parts: dict[str, bytes] = {}
        self._ids: dict[str, str] = {}
        for channel, event_id in (start or {}).items():
            self.advance(channel, event_id)

    def __contains__(self, channel: object) -> bool:
        return channel in self._parts

    def __len__(self) -> int:
        return len(self._parts)

    def advance(self, channel: str, event_id: str) -> bytes:
        """Record ``event_id`` as ``channel``'s newest broadcast; return the ``id:`` line."""
        self._parts[channel] = f"{channel}={_encode_id(event_id)}".encode()
        self._ids[channel] = event_id
        return self.line()

    def get(self, channel: str) -> str | None:
        """Return the id of ``channel``'s newest broadcast seen, or None."""
        return self._ids.get(channel)

    def drop(self, channel: str) -> bool:
        """Forget ``channel`` (removed from the stream); return whether it had a cursor."""
        self._ids.pop(channel, None)
        return self._parts.pop(channel, None) is not None

    def keep_only(self, limit: int) -> None:
        """Keep at most ``limit`` cursors (the oldest seen go first)."""
        while len(self._parts) > limit:
            self.drop(next(iter(self._parts)))

    def line(self) -> bytes:
        """Return the ``id:`` line (with its line end) naming every cursor."""
        return b"id: " + b",".join(self._parts.values()) + b"\n"

    def value(self) -> str:
        """Return the composite id as text (what ``Last-Event-ID`` will carry)."""
        return b",".join(self._parts.values()).decode()

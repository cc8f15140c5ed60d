"""A subscriber connection as the rest of the app names it: who, on which channel, framed how.

``Connection`` is what the hooks see (``on_connect``, ``on_disconnect``, ``on_publish``). The
connection's place in the hub and its queue of events are its ``mailbox.Mailbox``.
"""

from __future__ import annotations

import enum
import uuid

import msgspec

__all__ = ["Connection", "Framing", "new_connection_id"]


class Framing(enum.Enum):
    """How a connection wants its events framed."""

    SSE = "sse"  #: ``id:``/``data:`` bytes
    TEXT = "text"  #: the envelope as ``str`` (a WebSocket text frame)
    JSON = "json"  #: the envelope as ``bytes`` (a server-side subscriber)
    #: ``data:`` bytes with their channel and event id (an SSE stream of several channels)
    MULTI = "sse-multi"
    #: text frames with their channel (a WebSocket of several channels)
    TEXT_MULTI = "text-multi"


class Connection(msgspec.Struct, frozen=True, gc=False):
    """A subscriber connection, as the hooks see it.

    Attributes:
        user_id: the user it runs as.
        channel: the channel it subscribed to.
        connection_id: unique across processes; the publish token is bound to it.
    """

    user_id: str
    channel: str
    connection_id: str


def new_connection_id() -> str:
    """Return a connection id that is unique across processes and hosts."""
    return uuid.uuid4().hex

"""Server-Sent Events framing, as pure functions returning bytes (no I/O).

The payloads given here are compact JSON from msgspec, which never contains a raw line break, so
every event is a single ``data:`` line.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PING", "REQUEST_END", "comment", "event", "retry"]


def event(data: bytes, event_id: str | None = None) -> bytes:
    """Frame ``data`` as one SSE event, with an ``id:`` line when ``event_id`` is given."""
    if event_id is None:
        return b"data: " + data + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def comment(text: str) -> bytes:
    """Frame a comment line, which every EventSource ignores (used as a heartbeat)."""
    return b": " + text.encode() + b"\n\n"


def retry(milliseconds: int) -> bytes:
    """Frame the reconnection delay the browser should use."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"


#: The heartbeat comment.
PING: Final = comment("ping")
#: Follows the last ``request`` event of a reply (a reply may be split into several events);
#: browsers ignore comments, the Python client uses it to know the history is complete.
REQUEST_END: Final = comment("request-end")

"""Server-Sent Events framing, as pure functions returning bytes, and the line splitter readers use.

The payloads given here are compact JSON from msgspec, which never contains a raw line break, so
every event is a single ``data:`` line. JSON strings may hold U+2028, U+2029 or U+0085 unescaped;
those are not line breaks in SSE, which ends a line at CR LF, LF or CR only (:func:`lines`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

__all__ = ["PING", "REQUEST_END", "comment", "event", "lines", "retry"]


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


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Split an SSE byte stream into lines, at CR LF, LF or CR only (as the SSE standard says).

    ``str.splitlines`` (and so ``httpx``'s ``aiter_lines``) also splits at U+2028, U+2029, U+0085
    and other characters a JSON string may hold raw, which would cut an event's ``data:`` in two.
    A CR at the end of a chunk is kept until the next one shows whether an LF follows it. A last
    line with no line end is dropped, as an unfinished event is.
    """
    buffer = bytearray()
    async for chunk in chunks:
        held_cr = buffer.endswith(b"\r")
        buffer += chunk
        if not (held_cr or b"\n" in chunk or b"\r" in chunk):
            continue
        data = bytes(buffer)
        cut = len(data) - 1 if data.endswith(b"\r") else len(data)
        *complete, rest = data[:cut].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        buffer = bytearray(rest + data[cut:])
        for line in complete:
            yield line.decode("utf-8", "replace")
    if buffer.endswith(b"\r"):  # what is left holds no line end but this last CR
        yield buffer[:-1].decode("utf-8", "replace")

"""SSE framing: events with and without id, comments, retry and the heartbeat, as exact bytes."""

from __future__ import annotations

import pytest

from channel_asgi import sse


def test_event_without_id_is_one_data_line() -> None:
    """An event without an id is a single ``data:`` line ended by a blank line."""
    assert sse.event(b'{"type":"system"}') == b'data: {"type":"system"}\n\n'


def test_event_with_id_puts_the_id_line_first() -> None:
    """An event with an id has ``id:`` then ``data:``, so ``lastEventId`` is set by it."""
    framed = sse.event(b'{"type":"broadcast"}', "1700000000000-3")
    assert framed == b'id: 1700000000000-3\ndata: {"type":"broadcast"}\n\n'


@pytest.mark.parametrize(
    "event_id",
    ["0", "1700000000000-0", "a:b@c/d.e_f", "x" * 200],
    ids=["zero", "ms-seq", "punctuation", "long"],
)
def test_event_id_is_written_verbatim(event_id: str) -> None:
    """The id goes on the wire exactly as the storage gave it."""
    assert sse.event(b"1", event_id) == b"id: " + event_id.encode() + b"\ndata: 1\n\n"


def test_empty_id_is_still_an_id_line() -> None:
    """An empty string id is framed (it resets ``lastEventId``), unlike no id at all."""
    assert sse.event(b"1", "") == b"id: \ndata: 1\n\n"


def test_data_is_copied_byte_for_byte() -> None:
    """Non-ASCII UTF-8 in the payload is not re-encoded or escaped."""
    payload = '{"message":"café ✓"}'.encode()
    assert sse.event(payload) == b"data: " + payload + b"\n\n"


@pytest.mark.parametrize("data", [b"", b"{}", b"[1,2,3]"])
def test_every_event_is_terminated_by_one_blank_line(data: bytes) -> None:
    """Each frame ends in exactly ``\\n\\n`` and contains no other blank line."""
    for framed in (sse.event(data), sse.event(data, "1")):
        assert framed.endswith(b"\n\n")
        assert b"\n\n" not in framed[:-2]


def test_comment_is_a_colon_line() -> None:
    """A comment starts with a colon, which every EventSource ignores."""
    assert sse.comment("hello") == b": hello\n\n"


@pytest.mark.parametrize(
    ("milliseconds", "framed"),
    [(3000, b"retry: 3000\n\n"), (0, b"retry: 0\n\n"), (15000, b"retry: 15000\n\n")],
)
def test_retry_frames_milliseconds(milliseconds: int, framed: bytes) -> None:
    """``retry:`` carries the reconnection delay as an integer of milliseconds."""
    assert sse.retry(milliseconds) == framed


def test_ping_is_the_heartbeat_comment() -> None:
    """The heartbeat is the ``: ping`` comment of the SPEC."""
    assert sse.PING == b": ping\n\n"
    assert sse.PING == sse.comment("ping")

"""Chat replay by media time: the archive and ``channels.history()`` (issue 16).

Broadcasts are archived by ``timestamp`` besides the live history, on both storages; a page is
read with ``from``/``to``/``limit``/``after``, ordered by (timestamp, id), and pages continue with
no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from channel_asgi import ChannelApp, Envelope
from channel_asgi.storage import MemoryStorage, RedisStorage
from channel_asgi.storage.base import Storage

SECRET = "archive-test-secret-0123456789abcdef"
ORIGIN = "https://viewer.example"

#: Media times out of order, two alike, and one without a media time (0: not archived).
STAMPS = [5.0, 1.0, 3.0, 3.0, 0.0, 9.0, 2.5]


@pytest.fixture(params=["memory", "redis"])
def new_storage(request: pytest.FixtureRequest) -> Callable[[], Storage]:
    """Make the storage of an app under test: memory, or the real Redis under a fresh prefix."""
    if request.param == "memory":
        return MemoryStorage
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda: RedisStorage(url, prefix=prefix)


def in_media_order(
    sent: list[tuple[float, str]], start: float = 0.0, end: float = float("inf")
) -> list[str]:
    """The ids of ``(timestamp, id)`` pairs published in that order, archived ones only, with
    ``start <= timestamp < end``, in (timestamp, publication) order."""
    ordered = sorted((stamp, n, event_id) for n, (stamp, event_id) in enumerate(sent))
    return [event_id for stamp, _, event_id in ordered if stamp > 0 and start <= stamp < end]


async def publish_stamps(channels: ChannelApp, channel: str, stamps: list[float]) -> list[Any]:
    """Broadcast one message per media time (server side); return the (timestamp, id) pairs."""
    sent = []
    for n, stamp in enumerate(stamps):
        event_id = await channels.publish(channel, {"n": n}, timestamp=stamp)
        sent.append((stamp, event_id))
    return sent


async def test_broadcasts_are_archived_by_media_time_apart_from_the_live_history(
    new_storage: Callable[[], Storage],
) -> None:
    """The archive keeps more than ``history_size``, ordered by (timestamp, id), without 0s."""
    async with ChannelApp(
        secret=SECRET, storage=new_storage(), archive_size=100, history_size=2
    ) as channels:
        sent = await publish_stamps(channels, "vod/1", STAMPS)
        events = await channels.history("vod/1")
        assert [event.id for event in events] == in_media_order(sent)
        assert all(isinstance(event, Envelope) and event.type == "broadcast" for event in events)
        assert [event.timestamp for event in events] == [1.0, 2.5, 3.0, 3.0, 5.0, 9.0]
        assert [event.message["n"] for event in events[2:4]] == [2, 3]  # ties: publication order
        live = await channels.storage.history("vod/1")
        assert [event.id for event in live.events] == [sent[-2][1], sent[-1][1]]
        window = await channels.history("vod/1", start=2.5, end=5.0)
        assert [event.timestamp for event in window] == [2.5, 3.0, 3.0]


async def test_no_archive_by_default_and_a_pattern_sets_its_own_size() -> None:
    """``archive_size=0`` archives nothing; ``archive=`` on a pattern bounds its channels."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("vod/{id}", archive=3)
    async with channels:
        await publish_stamps(channels, "live/1", [1.0, 2.0])
        assert await channels.history("live/1") == []
        sent = await publish_stamps(channels, "vod/7", [4.0, 1.0, 3.0, 2.0, 0.5])
        kept = await channels.history("vod/7")
        # Full at three: the oldest media time goes first, and 0.5 is older than all of them.
        assert [event.id for event in kept] == [sent[3][1], sent[2][1], sent[0][1]]


async def test_pages_continue_after_the_last_id_without_gap_or_duplicate(
    new_storage: Callable[[], Storage],
) -> None:
    """Many broadcasts share a media time: pages by ``after`` still cover the range once."""
    async with ChannelApp(secret=SECRET, storage=new_storage(), archive_size=1000) as channels:
        sent = await publish_stamps(channels, "vod/p", [10.0 + n // 7 for n in range(30)])
        seen: list[str] = []
        after = None
        while True:
            page = await channels.history("vod/p", start=11, end=14, limit=4, after=after)
            seen += [event.id or "" for event in page]
            if len(page) < 4:
                break
            after = page[-1].id
    assert seen == in_media_order(sent, 11, 14)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"start": -1.0}, ValueError),
        ({"end": float("inf")}, ValueError),
        ({"start": 5.0, "end": 1.0}, ValueError),
        ({"limit": 0}, ValueError),
        ({"limit": 1001}, ValueError),
        ({"limit": 2.0}, TypeError),
        ({"start": "1"}, TypeError),
        ({"start": True}, TypeError),
        ({"after": 5}, TypeError),
        ({"after": "1-0"}, ValueError),
        ({"after": "nonsense"}, ValueError),
    ],
)
async def test_server_side_history_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type
) -> None:
    """``channels.history()`` raises as the server-side API does: ValueError or TypeError."""
    async with ChannelApp(secret=SECRET, archive_size=10) as channels:
        await channels.publish("vod/s", "x", timestamp=1.0)
        with pytest.raises(error):
            await channels.history("vod/s", **kwargs)
        with pytest.raises(ValueError):
            await channels.history("bad name")

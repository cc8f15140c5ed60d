"""Chat replay by media time: the archive, ``GET /history`` and ``channels.history()`` (issue 16).

Broadcasts are archived by ``timestamp`` besides the live history, on both storages; a page is
read with ``from``/``to``/``limit``/``after``, ordered by (timestamp, id), and pages continue with
no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from channel_asgi import ChannelApp, Envelope
from channel_asgi.archive import CLOSED_MAX_AGE
from channel_asgi.auth import Request
from channel_asgi.storage import MemoryStorage, RedisStorage
from channel_asgi.storage.base import Storage

from .helpers import publish, subscribe

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
    serve, client: httpx.AsyncClient, new_storage: Callable[[], Storage]
) -> None:
    """Many broadcasts share a media time: pages by ``after`` still cover the range once."""
    channels = ChannelApp(secret=SECRET, storage=new_storage(), archive_size=1000)
    base = await serve(channels)
    sent = await publish_stamps(channels, "vod/p", [10.0 + n // 7 for n in range(30)])
    expected = in_media_order(sent, 11, 14)

    seen: list[str] = []
    after = None
    while True:  # the server-side API
        page = await channels.history("vod/p", start=11, end=14, limit=4, after=after)
        seen += [event.id or "" for event in page]
        if len(page) < 4:
            break
        after = page[-1].id
    assert seen == expected

    seen, pages = [], 0
    params: dict[str, Any] = {"from": 11, "to": 14, "limit": 4}
    while True:  # GET /history, following ``next``
        reply = await client.get(f"{base}/history/vod/p", params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        pages += 1
        assert set(body) == {"code", "message", "events", "next"} and body["code"] == 200
        seen += [event["id"] for event in body["events"]]
        if body["next"] is None:
            break
        assert body["next"] == body["events"][-1]["id"]
        params["after"] = body["next"]
    assert seen == expected and pages == 6  # 21 broadcasts: five full pages and one of one


async def test_history_page_is_json_envelopes_with_ids_and_cors(
    serve, client: httpx.AsyncClient
) -> None:
    """Each event is the envelope subscribers got, with its id; CORS as on the other routes."""
    channels = ChannelApp(secret=SECRET, archive_size=10, cors_origins=[ORIGIN])
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/vod/c") as sub:
        body = {"type": "broadcast", "message": {"text": "hi"}, "timestamp": 12.5}
        sent = (await publish(client, f"{base}/publish/vod/c", sub.token, body)).json()["id"]
        live = await sub.stream.until("broadcast")
    assert live.json["id"] == sent
    reply = await client.get(f"{base}/history/vod/c", headers={"origin": ORIGIN})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.json() == {
        "code": 200,
        "message": "1 archived broadcast",
        "events": [live.json],
        "next": None,
    }
    preflight = await client.options(
        f"{base}/history/vod/c",
        headers={"origin": ORIGIN, "access-control-request-method": "GET"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    wrong = await client.post(f"{base}/history/vod/c")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET, OPTIONS")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("from=abc", "`from`"),
        ("from=-1", "`from`"),
        ("to=nan", "`to`"),
        ("to=inf", "`to`"),
        ("to=1e999", "`to`"),
        ("limit=0", "`limit`"),
        ("limit=1001", "`limit`"),
        ("limit=1.5", "`limit`"),
        ("limit=many", "`limit`"),
        ("from=5&to=1", "`from`"),
        ("after=1-0", "`after`"),
        ("after=not-an-id", "`after`"),
    ],
)
async def test_bad_history_parameters_are_400_naming_the_parameter(
    serve, client: httpx.AsyncClient, query: str, named: str
) -> None:
    """A bad ``from``, ``to``, ``limit`` or ``after``, or ``from > to``: 400, before any read."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    base = await serve(channels)
    await channels.publish("vod/b", "x", timestamp=1.0)
    reply = await client.get(f"{base}/history/vod/b?{query}")
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == 400
    assert f"Query parameter {named}" in reply.json()["message"]


async def test_history_edges_are_not_errors(serve, client: httpx.AsyncClient) -> None:
    """``from == to`` is empty, limits 1 and 1000 are allowed, empty values are left out."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    base = await serve(channels)
    await publish_stamps(channels, "vod/e", [1.0, 2.0])
    for query, count in [("from=1&to=1", 0), ("limit=1", 1), ("limit=1000", 2), ("from=&to=", 2)]:
        reply = await client.get(f"{base}/history/vod/e?{query}")
        assert (reply.status_code, len(reply.json()["events"])) == (200, count), query
    unknown = await client.get(f"{base}/history/never-used")
    assert (unknown.status_code, unknown.json()["events"]) == (200, [])
    bad_name = await client.get(f"{base}/history/bad name")
    assert bad_name.status_code == 400


class StaffOnlyHistory:
    """An ``Auth`` whose users are named by a header; only staff may read the history."""

    async def identify(self, request: Request) -> str | None:
        return request.headers.get("x-user")

    async def allow(self, user_id: str | None, channel: str, action: str) -> bool:
        return action != "request" or user_id == "staff"


async def test_history_is_authorised_as_a_subscribe_and_needs_the_history_permission(
    serve, client: httpx.AsyncClient
) -> None:
    """Identity tokens and patterns as on subscribe; ``history=False`` or no ``request``: 403."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    channels.channel("members/{id}", anonymous_subscribe=False)
    channels.channel("nohistory/{id}", history=False)
    channels.channel("liveonly/{id}", types=["broadcast"])
    base = await serve(channels)
    assert (await client.get(f"{base}/history/open/1")).status_code == 200
    assert (await client.get(f"{base}/history/members/1")).status_code == 401
    token = channels.issue_token("alice", channels=["members/1"])
    mine = await client.get(f"{base}/history/members/1", params={"token": token})
    assert mine.status_code == 200
    bearer = await client.get(
        f"{base}/history/members/1", headers={"authorization": f"Bearer {token}"}
    )
    assert bearer.status_code == 200
    other = await client.get(f"{base}/history/members/2", params={"token": token})
    assert other.status_code == 403
    forged = await client.get(f"{base}/history/members/1", params={"token": token + "x"})
    assert forged.status_code == 401
    for channel in ("nohistory/1", "liveonly/1"):
        refused = await client.get(f"{base}/history/{channel}")
        assert refused.status_code == 403, channel
        assert refused.json()["code"] == 403

    guarded = ChannelApp(secret=SECRET, archive_size=10, auth=StaffOnlyHistory())
    base = await serve(guarded)
    staff = await client.get(f"{base}/history/room", headers={"x-user": "staff"})
    assert staff.status_code == 200
    viewer = await client.get(f"{base}/history/room", headers={"x-user": "viewer"})
    assert viewer.status_code == 403
    assert (await client.get(f"{base}/history/room")).status_code == 401  # anonymous


async def test_history_false_also_refuses_request_and_resume(
    serve, client: httpx.AsyncClient
) -> None:
    """A channel that keeps no history: ``request`` is 403, a resume replays nothing."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("nohistory/{id}", history=False)
    base = await serve(channels)
    first = await channels.publish("nohistory/1", "a")
    async with subscribe(client, f"{base}/subscribe/nohistory/1") as sub:
        url = f"{base}/publish/nohistory/1"
        assert (await publish(client, url, sub.token, {"type": "request"})).status_code == 403
        assert (
            await publish(client, url, sub.token, {"type": "broadcast", "message": 1})
        ).is_success
    async with subscribe(
        client, f"{base}/subscribe/nohistory/1", headers={"last-event-id": first}
    ) as resumed:
        assert resumed.init["message"]["recovered"] is False


async def test_open_channels_revalidate_and_closed_ones_are_cacheable(
    serve, client: httpx.AsyncClient
) -> None:
    """``ETag`` is the body's hash (``If-None-Match``: 304); closed channels get a max-age."""
    channels = ChannelApp(secret=SECRET, archive_size=10, cors_origins=[ORIGIN])
    base = await serve(channels)
    await channels.publish("vod/k", "first", timestamp=1.0)
    url = f"{base}/history/vod/k"
    reply = await client.get(url)
    assert reply.headers["cache-control"] == "no-cache"
    etag = reply.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    same = await client.get(url, headers={"if-none-match": etag, "origin": ORIGIN})
    assert (same.status_code, same.content) == (304, b"")
    assert same.headers["etag"] == etag
    assert same.headers["access-control-allow-origin"] == ORIGIN
    for listed in (f'"other", W/{etag}', "*"):
        assert (await client.get(url, headers={"if-none-match": listed})).status_code == 304
    assert (await client.get(url, headers={"if-none-match": '"other"'})).status_code == 200
    other_page = await client.get(url, params={"from": 2}, headers={"if-none-match": etag})
    assert other_page.status_code == 200 and other_page.headers["etag"] != etag

    await channels.publish("vod/k", "second", timestamp=2.0)
    grown = await client.get(url, headers={"if-none-match": etag})
    assert grown.status_code == 200 and grown.headers["etag"] != etag
    await channels.close_channel("vod/k")
    closed = await client.get(url)
    assert closed.status_code == 200 and len(closed.json()["events"]) == 2
    assert closed.headers["cache-control"] == f"public, max-age={CLOSED_MAX_AGE}"
    assert closed.headers["etag"] == grown.headers["etag"]

    guarded = ChannelApp(secret=SECRET, archive_size=10)
    guarded.channel("vod/{id}", anonymous_subscribe=False)
    base = await serve(guarded)
    await guarded.publish("vod/k", "x", timestamp=1.0)
    await guarded.close_channel("vod/k")
    token = guarded.issue_token("alice")
    private = await client.get(f"{base}/history/vod/k", params={"token": token})
    assert private.headers["cache-control"] == f"private, max-age={CLOSED_MAX_AGE}"


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


async def test_an_archived_broadcast_that_cannot_be_decoded_is_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``channels.history()`` leaves out, with a warning naming it, what it cannot decode."""
    async with ChannelApp(secret=SECRET, archive_size=10) as channels:
        good = await channels.publish("vod/u", "fine", timestamp=2.0)
        bad = b'{"type":"broadcast","message":1e999,"timestamp":1.0}'  # an older server's relay
        bad_id = await channels.storage.append("vod/u", bad, keep=10, archive=10, timestamp=1.0)
        with caplog.at_level("WARNING", logger="channel_asgi"):
            events = await channels.history("vod/u")
    assert [event.id for event in events] == [good]
    assert bad_id in caplog.text and "of the archive" in caplog.text

"""GET /subscribe/{channel}: headers, init, presence, broadcasts, heartbeats and resume."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.storage import MemoryStorage

from .helpers import WAIT, FakeClock, Subscriber, publish, subscribe, ticking


async def test_subscribe_sends_sse_headers_and_init_first(serve, client: httpx.AsyncClient) -> None:
    """The stream is text/event-stream, unbuffered, and its first event is init with a token."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/15") as sub:
        headers = sub.stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert sub.stream.retry == 3000
        message = sub.init["message"]
        assert set(message) == {"user_id", "token", "viewer_count"}
        assert message["viewer_count"] == 1
        assert sub.init["stream_id"] == "15"
        assert "id" not in sub.init


async def test_anonymous_users_get_distinct_ids(serve, client: httpx.AsyncClient) -> None:
    """Each anonymous subscriber is a fresh user."""
    base = await serve(ChannelApp())
    async with (
        subscribe(client, f"{base}/subscribe/a") as one,
        subscribe(client, f"{base}/subscribe/a") as two,
    ):
        assert one.user_id != two.user_id
        assert one.token != two.token


async def test_join_and_leave_reach_others_with_viewer_count(
    serve, client: httpx.AsyncClient
) -> None:
    """Others get system join/leave with the count; the joiner gets init, not its own join."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/room") as first:
        async with subscribe(client, f"{base}/subscribe/room") as second:
            join = (await first.stream.until("system")).json["message"]
            assert join == {"status": "join", "user_id": second.user_id, "viewer_count": 2}
            assert second.init["message"]["viewer_count"] == 2
        leave = (await first.stream.until("system")).json["message"]
        assert leave == {"status": "leave", "user_id": second.user_id, "viewer_count": 1}


async def test_above_system_events_max_viewers_joins_and_leaves_are_coalesced_into_counts(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Past the threshold no join or leave is sent one by one: a "count" event per interval
    carries how many joined and left since the last one, and the viewer count (the interval
    passes on the test's clock)."""
    storage = MemoryStorage(clock=clock.monotonic)
    channels = ChannelApp(storage=storage, system_events_max_viewers=2, presence_interval=5.0)
    base = await serve(channels)
    url = f"{base}/subscribe/crowd"

    async def counts(sub: Subscriber, joined: int, left: int) -> dict[str, object]:
        """The count events until they add up to ``joined`` and ``left``; the last one."""
        seen = {"joined": 0, "left": 0}
        while seen["joined"] < joined or seen["left"] < left:
            message: dict[str, Any] = (await sub.stream.until("system")).json["message"]
            assert message["status"] == "count", message  # no single join or leave
            seen["joined"] += message["joined"]
            seen["left"] += message["left"]
        assert seen == {"joined": joined, "left": left}
        return message

    async with subscribe(client, url) as first, subscribe(client, url) as second:
        join = (await first.stream.until("system")).json["message"]  # 2 viewers: one by one
        assert join == {"status": "join", "user_id": second.user_id, "viewer_count": 2}
        async with subscribe(client, url), ticking(clock, 5.0):
            async with subscribe(client, url):
                last = await counts(first, joined=2, left=0)
                assert last["viewer_count"] == 4
            last = await counts(first, joined=0, left=1)
            assert last["viewer_count"] == 3


async def test_broadcast_reaches_every_subscriber_with_an_id(
    serve, client: httpx.AsyncClient
) -> None:
    """A broadcast arrives on every stream (the sender's too) with the same SSE id."""
    base = await serve(ChannelApp(widget_keys={"wk"}))
    async with (
        subscribe(client, f"{base}/subscribe/15") as one,
        subscribe(client, f"{base}/subscribe/15") as two,
    ):
        body = {
            "type": "broadcast",
            "message": {"text": "hi"},
            "widget_key": "wk",
            "timestamp": 2.5,
        }
        reply = await publish(client, f"{base}/publish/15", one.token, body)
        assert reply.status_code == 200
        assert reply.json()["code"] == 200
        event_id = reply.json()["id"]
        for sub in (one, two):
            event = await sub.stream.until("broadcast")
            assert event.id == event_id
            assert event.json == {
                "id": event_id,
                "stream_id": "15",
                "author_id": one.user_id,
                "to_user_id": "",
                "message": {"text": "hi"},
                "timestamp": 2.5,
                "type": "broadcast",
                "widget_key": "",
            }


async def test_heartbeat_comments_arrive_at_the_configured_interval(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """An idle stream carries ': ping' comments (the heartbeat ticks on the test's clock)."""
    base = await serve(ChannelApp(heartbeat=15.0))
    async with subscribe(client, f"{base}/subscribe/quiet") as sub, ticking(clock, 5.0):
        with anyio.fail_after(WAIT):
            while sub.stream.comments.count("ping") < 2:
                await sub.stream.next(comments=True)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_replays_after_last_event_id_without_gap_or_duplicate(
    serve, client: httpx.AsyncClient, how: str
) -> None:
    """Reconnecting with a last event id replays exactly the broadcasts after it, then goes live."""
    channels = ChannelApp()
    base = await serve(channels)
    ids = [await channels.publish("r", {"n": n}) for n in range(5)]
    url = f"{base}/subscribe/r"
    resume_from = ids[1]
    assert resume_from is not None
    headers = None
    if how == "header":
        headers = {"Last-Event-ID": resume_from}
    else:
        url += f"?last_event_id={resume_from}"
    async with subscribe(client, url, headers=headers) as sub:
        assert sub.init["message"]["recovered"] is True
        replayed = [await sub.stream.next() for _ in range(3)]
        assert [event.id for event in replayed] == ids[2:]
        assert [event.json["message"]["n"] for event in replayed] == [2, 3, 4]
        live = await channels.publish("r", {"n": 5})
        event = await sub.stream.until("broadcast")
        assert event.id == live


async def test_resume_from_unknown_id_replays_everything_and_says_not_recovered(
    serve, client: httpx.AsyncClient
) -> None:
    """An evicted or unknown id gives recovered false and every retained broadcast."""
    channels = ChannelApp(history_size=3)
    base = await serve(channels)
    ids = [await channels.publish("r", n) for n in range(5)]
    evicted = ids[0]
    assert evicted is not None
    async with subscribe(client, f"{base}/subscribe/r", {"Last-Event-ID": evicted}) as sub:
        assert sub.init["message"]["recovered"] is False
        assert [(await sub.stream.next()).id for _ in range(3)] == ids[2:]


async def test_resume_from_newest_id_recovers_with_nothing_to_replay(
    serve, client: httpx.AsyncClient
) -> None:
    """The newest id is recovered even when history keeps nothing."""
    channels = ChannelApp(history_size=0)
    base = await serve(channels)
    newest = await channels.publish("r", "x")
    assert newest is not None
    async with subscribe(client, f"{base}/subscribe/r", {"Last-Event-ID": newest}) as sub:
        assert sub.init["message"]["recovered"] is True


async def test_init_has_no_recovered_field_without_last_event_id(
    serve, client: httpx.AsyncClient
) -> None:
    """recovered is present only when the request named a last event id."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/r") as sub:
        assert "recovered" not in sub.init["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/subscribe/",
        "/subscribe/a//b",
        "/subscribe/a/%2E/b",
        "/subscribe/a/%2E%2E/b",
        "/subscribe/%2E%2E",
        "/subscribe/bad%20name",
        "/subscribe/caf%C3%A9",
        "/subscribe/" + "x" * 201,
        "/subscribe/" + "%41" * 201,
        "/subscribe/%2E%2E",
    ],
)
async def test_bad_channel_names_are_400_before_the_stream(
    serve, client: httpx.AsyncClient, path: str
) -> None:
    """Bad names get a JSON 400, not a stream."""
    base = await serve(ChannelApp())
    reply = await client.get(base + path)
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == 400


async def test_percent_encoded_slash_is_the_same_channel(serve, client: httpx.AsyncClient) -> None:
    """%2F decodes to / before names are compared."""
    channels = ChannelApp()
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/chats%2F7") as sub:
        assert sub.init["stream_id"] == "chats/7"
        await channels.publish("chats/7", "hello")
        assert (await sub.stream.until("broadcast")).json["message"] == "hello"


async def test_longest_valid_channel_name_is_accepted(serve, client: httpx.AsyncClient) -> None:
    """200 characters, counted after percent-decoding, is the limit."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/" + "%41" * 200) as sub:
        assert sub.init["stream_id"] == "A" * 200


@pytest.mark.parametrize("path", ["/", "/subscribes", "/nope/1", "/publishx/1"])
async def test_unknown_paths_are_404_json(serve, client: httpx.AsyncClient, path: str) -> None:
    """Unknown paths answer a JSON 404."""
    base = await serve(ChannelApp())
    reply = await client.get(base + path)
    assert reply.status_code == 404
    assert reply.json()["code"] == 404


async def test_wrong_method_on_subscribe_is_405_with_allow(
    serve, client: httpx.AsyncClient
) -> None:
    """POST to subscribe is a 405 naming the allowed methods."""
    base = await serve(ChannelApp())
    reply = await client.post(f"{base}/subscribe/1")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, OPTIONS"
    assert reply.json() == {"code": 405, "message": reply.json()["message"]}

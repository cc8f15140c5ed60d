"""One SSE stream of several channels: ``GET /subscribe?channel=a&channel=b`` (SPEC 6.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest

from channel_asgi import ChannelApp, sse
from channel_asgi.cursors import parse_cursors
from channel_asgi.storage import MemoryStorage, RedisStorage

from .helpers import WAIT, EventStream, SSEEvent, eventually, publish

SECRET = "streams-test-secret-0123456789abcdef"


@pytest.fixture(params=["memory", "redis"])
def make_app(request: pytest.FixtureRequest) -> Any:
    """Build a ChannelApp on memory or on Redis (a key prefix of the test's own)."""

    def make(**options: Any) -> ChannelApp:
        if request.param == "memory":
            return ChannelApp(storage=MemoryStorage(), secret=SECRET, **options)
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        return ChannelApp(storage=RedisStorage(url, prefix=prefix), secret=SECRET, **options)

    return make


class Stream:
    """An open stream of several channels: its events and the inits by channel."""

    def __init__(self, events: EventStream) -> None:
        self.events = events
        self.inits: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # the channels of the inits, in the order they came
        self.last_id: str | None = None
        self.pending: list[SSEEvent] = []  # read while waiting for the inits

    async def read_inits(self, count: int) -> None:
        """Read until ``count`` inits have come (each channel's replay follows its init)."""
        while len(self.inits) < count:
            event = await self._read()
            if event.type != "init":
                self.pending.append(event)

    async def next(self) -> SSEEvent:
        if self.pending:
            return self.pending.pop(0)
        return await self._read()

    async def _read(self) -> SSEEvent:
        event = await self.events.next()
        if event.id is not None:
            self.last_id = event.id
        if event.type == "init":
            self.inits[event.json["stream_id"]] = event.json
            self.order.append(event.json["stream_id"])
        return event

    async def until(self, type_: str, channel: str | None = None) -> SSEEvent:
        while True:
            event = await self.next()
            if event.type == type_ and (channel is None or event.json["stream_id"] == channel):
                return event

    def token(self, channel: str) -> str:
        return str(self.inits[channel]["message"]["token"])


@asynccontextmanager
async def stream_of(
    client: httpx.AsyncClient, base: str, *channels: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    """Open ``/subscribe?channel=...`` and read one init per channel."""
    params = httpx.QueryParams([("channel", channel) for channel in channels])
    async with client.stream(
        "GET", f"{base}/subscribe", params=params, headers=headers, timeout=WAIT
    ) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        stream = Stream(EventStream(response, sse.lines(response.aiter_bytes())))
        await stream.read_inits(len(channels))
        assert stream.order == list(channels)
        yield stream


async def settled(channels: ChannelApp, *names: str) -> None:
    """Wait until the streams that closed have left ``names`` (their cleanup is asynchronous).

    The test's end stops the app; a cleanup still running then would reopen the storage.
    """
    for name in names:
        await eventually(partial(channels.viewer_count, name), lambda n: n == 0)


def chat(text: str) -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text}}


async def test_one_stream_delivers_every_channel_with_its_stream_id(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """One init per channel in order, one user, then each channel's broadcasts."""
    channels = make_app()
    base = await serve(channels)
    async with stream_of(client, base, "a", "b", "c") as stream:
        users = {init["message"]["user_id"] for init in stream.inits.values()}
        assert len(users) == 1
        assert [init["message"]["viewer_count"] for init in stream.inits.values()] == [1, 1, 1]
        for channel in ("c", "a", "b"):
            reply = await publish(
                client, f"{base}/publish/{channel}", stream.token(channel), chat(channel)
            )
            assert reply.status_code == 200, reply.text
            event = await stream.until("broadcast")
            assert event.json["stream_id"] == channel
            assert event.json["id"] == reply.json()["id"]
            assert parse_cursors(event.id)[channel] == reply.json()["id"]
        assert set(parse_cursors(stream.last_id)) == {"a", "b", "c"}
    await settled(channels, "a", "b", "c")


async def refusal(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[int, str]:
    reply = await client.get(url, timeout=WAIT, **kwargs)
    body = reply.json()
    assert body["code"] == reply.status_code
    return reply.status_code, body["message"]


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "Name the channels"),
        ("?channel=a&channel=a%20b", 400, "'a b'"),
        ("?channel=a&channel=a", 400, "named twice"),
        ("?channel=a&channel=b&channel=c&channel=d", 400, "at most 3 per connection"),
        ("?channel=ok&channel=closed", 404, "'closed' is closed"),
        ("?channel=ok&channel=members/1&channel=closed", 401, "Sign in"),
        ("?channel=ok&channel=secret/1", 403, "Not allowed"),
    ],
)
async def test_a_refused_channel_refuses_the_whole_stream(
    serve, client: httpx.AsyncClient, query: str, status: int, words: str
) -> None:
    """The first refused channel, in order, answers with its status; nothing stays joined."""
    channels = ChannelApp(max_channels_per_connection=3)
    channels.channel("members/{id}", anonymous_subscribe=False)
    channels.channel("secret/{id}", authorize=lambda user, action, params: False)
    await channels.close_channel("closed")
    base = await serve(channels)
    code, message = await refusal(client, f"{base}/subscribe{query}")
    assert (code, words in message) == (status, True), message
    assert await channels.viewer_count("ok") == 0


async def test_a_banned_user_is_refused_the_whole_stream(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """A ban on one of the channels is a 403 for the stream, and the others are left again."""
    channels = make_app()
    base = await serve(channels)
    await channels.ban("b", "mallory")
    token = channels.issue_token("mallory")
    code, message = await refusal(client, f"{base}/subscribe?channel=a&channel=b&token={token}")
    assert (code, message) == (403, "You are banned from this channel")
    assert await channels.viewer_count("a") == 0


async def test_last_event_id_resumes_every_channel_exactly(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """A reconnect with the stream's last id replays what each channel missed, once."""
    channels = make_app()
    base = await serve(channels)
    async with stream_of(client, base, "a", "b", "quiet") as first:
        for channel in ("a", "b"):
            await channels.publish(channel, f"{channel}1")
            await first.until("broadcast", channel)
        last = first.last_id
    assert last is not None and set(parse_cursors(last)) == {"a", "b"}
    missed = {
        "a": [await channels.publish("a", "a2")],
        "b": [await channels.publish("b", "b2"), await channels.publish("b", "b3")],
    }
    await channels.publish("quiet", "after the first stream: no cursor, not replayed")
    async with stream_of(
        client, base, "a", "b", "quiet", headers={"last-event-id": last}
    ) as second:
        assert second.inits["a"]["message"]["recovered"] is True
        assert second.inits["b"]["message"]["recovered"] is True
        assert "recovered" not in second.inits["quiet"]["message"]
        await channels.publish("a", "live")
        seen: dict[str, list[str]] = {"a": [], "b": []}
        while len(seen["a"]) < 2 or len(seen["b"]) < 2:
            event = await second.until("broadcast")
            seen[event.json["stream_id"]].append(event.json["message"])
        assert seen == {"a": ["a2", "live"], "b": ["b2", "b3"]}
        assert parse_cursors(second.last_id)["b"] == missed["b"][-1]
    await settled(channels, "a", "b", "quiet")


async def test_a_resume_past_the_history_says_recovered_false_for_that_channel(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """Each channel's init says whether its own resume was exact."""
    channels = make_app(history_size=2)
    base = await serve(channels)
    async with stream_of(client, base, "a", "b") as first:
        for channel in ("a", "b"):
            await channels.publish(channel, "1")
            await first.until("broadcast", channel)
        last = first.last_id
    for n in range(3):
        await channels.publish("a", f"evicting {n}")
    async with stream_of(client, base, "a", "b", headers={"last-event-id": last or ""}) as again:
        assert again.inits["a"]["message"]["recovered"] is False
        assert again.inits["b"]["message"]["recovered"] is True
    await settled(channels, "a", "b")


async def test_presence_counts_the_stream_once_per_channel(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """viewer_count and presence see one connection on each channel; the others see joins."""
    channels = make_app()
    base = await serve(channels)
    async with stream_of(client, base, "a") as watcher:
        async with stream_of(client, base, "a", "b") as stream:
            user = stream.inits["a"]["message"]["user_id"]
            assert stream.inits["a"]["message"]["viewer_count"] == 2
            join = await watcher.until("system")
            assert join.json["message"] == {"status": "join", "user_id": user, "viewer_count": 2}
            assert await channels.viewer_count("a") == 2
            assert await channels.viewer_count("b") == 1
            assert (await channels.presence("b")) == {user: 1}
        leave = await watcher.until("system")
        assert leave.json["message"]["status"] == "leave"
    assert await eventually(lambda: channels.viewer_count("b"), lambda n: n == 0) == 0


async def test_closing_one_channel_ends_it_and_the_stream_goes_on(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """close_channel ends that channel only; the stream ends after its last channel."""
    channels = make_app()
    base = await serve(channels)
    async with stream_of(client, base, "a", "b") as stream:
        await channels.close_channel("a")
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("a", {"status": "closed"})
        assert await eventually(lambda: channels.viewer_count("a"), lambda n: n == 0) == 0
        await channels.publish("b", "still here")
        assert (await stream.until("broadcast")).json["message"] == "still here"
        assert await channels.viewer_count("b") == 1
        await channels.close_channel("b")
        assert (await stream.until("end")).json["stream_id"] == "b"
        assert await stream.events.ended()


async def test_a_ban_or_disconnect_on_one_channel_ends_that_channel_only(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """ban ends the user's channel with banned, disconnect with disconnected; b goes on."""
    channels = make_app()
    base = await serve(channels)
    token = channels.issue_token("mallory")
    async with stream_of(
        client, base, "a", "b", "c", headers={"authorization": f"Bearer {token}"}
    ) as stream:
        await channels.ban("a", "mallory")
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("a", {"status": "banned"})
        assert await channels.disconnect("b", "mallory") == 1
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("b", {"status": "disconnected"})
        await channels.publish("c", "c goes on")
        assert (await stream.until("broadcast")).json["message"] == "c goes on"
        assert await channels.presence("c") == {"mallory": 1}
        assert await eventually(lambda: channels.presence("b"), lambda p: p == {}) == {}
    await settled(channels, "c")


async def test_publish_private_and_request_use_each_channels_own_token(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """Each init's token publishes to its channel; a request replies with that channel's history."""
    channels = make_app()
    base = await serve(channels)
    await channels.publish("b", "old b")
    async with stream_of(client, base, "a", "b") as stream:
        user = stream.inits["a"]["message"]["user_id"]
        reply = await publish(client, f"{base}/publish/a", stream.token("b"), chat("x"))
        assert reply.status_code == 403
        reply = await publish(client, f"{base}/publish/b", stream.token("b"), {"type": "request"})
        assert reply.status_code == 200, reply.text
        history = await stream.until("request")
        assert history.json["stream_id"] == "b"
        assert [item["message"] for item in history.json["message"]] == ["old b"]
        private = {"type": "private", "message": "psst", "to_user_id": user}
        async with stream_of(client, base, "a") as other:
            reply = await publish(client, f"{base}/publish/a", other.token("a"), private)
            assert reply.status_code == 200
        event = await stream.until("private")
        assert (event.json["stream_id"], event.id) == ("a", None)
    await settled(channels, "a", "b")


async def change(client: httpx.AsyncClient, base: str, token: str, **body: Any) -> httpx.Response:
    return await client.post(f"{base}/subscribe", json={"stream": token, **body}, timeout=WAIT)


async def test_a_live_stream_adds_and_removes_channels(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """POST /subscribe: an added channel's init and events follow; a removed one ends."""
    channels = make_app()
    base = await serve(channels)
    async with stream_of(client, base, "a", "b") as stream:
        await channels.publish("a", "a1")
        await stream.until("broadcast", "a")
        reply = await change(client, base, stream.token("a"), add=["c"], remove=["a"])
        assert reply.status_code == 202, reply.text
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("a", {"status": "removed"})
        init = await stream.until("init")
        assert init.json["stream_id"] == "c"
        assert init.json["message"]["user_id"] == stream.inits["a"]["message"]["user_id"]
        assert await channels.viewer_count("a") == 0
        assert await channels.viewer_count("c") == 1
        await channels.publish("a", "not any more")
        await channels.publish("c", "c1")
        event = await stream.until("broadcast")
        assert (event.json["stream_id"], event.json["message"]) == ("c", "c1")
        assert set(parse_cursors(stream.last_id)) == {"c"}
        # the token of a channel the stream left no longer names it
        reply = await change(client, base, stream.token("a"), add=["d"])
        assert reply.status_code == 410
        reply = await change(client, base, stream.token("c"), remove=["b", "c"])
        assert reply.status_code == 202
        assert {(await stream.until("end")).json["stream_id"] for _ in range(2)} == {"b", "c"}
        assert await stream.events.ended()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"stream": "forged.token"}, 401, "token signature"),
        ({"add": ["x y"]}, 400, "'x y'"),
        ({}, 400, "Nothing to change"),
        ({"add": ["a", "b", "c", "d"]}, 400, "at most 3 per connection"),
        ({"add": ["closed"]}, 404, "'closed' is closed"),
        ({"add": ["members/1"]}, 401, "Sign in"),
        ({"add": 3}, 400, "Expected `array`"),
    ],
)
async def test_a_refused_change_changes_nothing(
    serve, client: httpx.AsyncClient, body: dict[str, Any], status: int, words: str
) -> None:
    """A change is refused with the usual status and reply before it reaches the stream."""
    channels = ChannelApp(max_channels_per_connection=3)
    channels.channel("members/{id}", anonymous_subscribe=False)
    await channels.close_channel("closed")
    base = await serve(channels)
    async with stream_of(client, base, "a") as stream:
        reply = await client.post(
            f"{base}/subscribe", json={"stream": stream.token("a"), **body}, timeout=WAIT
        )
        assert (reply.status_code, words in reply.json()["message"]) == (status, True), reply.text
        assert reply.json()["code"] == status
        assert await channels.viewer_count("a") == 1


async def test_an_add_past_the_cap_or_of_a_banned_user_ends_that_channel_refused(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """What only the stream's process can check is refused in the stream, as an end event."""
    channels = make_app(max_channels_per_connection=2)
    base = await serve(channels)
    token = channels.issue_token("mallory")
    async with stream_of(client, base, "a", headers={"authorization": f"Bearer {token}"}) as stream:
        headers = {"authorization": f"Bearer {token}"}
        body = {"stream": stream.token("a"), "add": ["b", "c"]}
        reply = await client.post(f"{base}/subscribe", json=body, headers=headers)
        assert reply.status_code == 202, reply.text
        assert (await stream.until("init")).json["stream_id"] == "b"
        end = await stream.until("end")
        assert end.json["stream_id"] == "c"
        assert end.json["message"]["status"] == "refused"
        assert end.json["message"]["code"] == 400
        assert "at most 2 per connection" in end.json["message"]["message"]
        # another identity than the stream's user is refused at the POST
        other = channels.issue_token("eve")
        body = {"stream": stream.token("a"), "add": ["d"]}
        reply = await client.post(
            f"{base}/subscribe", json=body, headers={"authorization": f"Bearer {other}"}
        )
        assert reply.status_code == 403
    await settled(channels, "a", "b")

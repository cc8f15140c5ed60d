"""channel_asgi.client: one subscription to several channels over one stream (SSE or WS)."""

from __future__ import annotations

import os
import signal
from typing import cast

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.client import ChannelError, Client, Envelope, Subscription, Transport
from channel_asgi.client_streams import Streams

from .helpers import WAIT, eventually, free_port
from .test_streams import settled

SECRET = "s" * 40


@pytest.fixture(params=["sse", "ws"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return cast(Transport, request.param)


async def next_event(sub: Subscription, kind: str | None = None) -> Envelope:
    """The next iterated event (of ``kind``), within WAIT."""
    with anyio.fail_after(WAIT):
        async for event in sub:
            if kind is None or event.type == kind:
                return event
    raise AssertionError("the subscription ended")


async def test_subscribe_to_several_channels_publishes_and_iterates_each(
    serve, transport: Transport
) -> None:
    """Events of every channel are iterated; a publish or request names its channel."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport) as client, client.subscribe("a", "b") as sub:
        assert isinstance(sub, Streams)
        assert set(sub.tokens) == {"a", "b"} and sub.user_id
        with pytest.raises(ValueError, match="name one"):
            await sub.publish("which?")
        sent = await sub.publish({"to": "b"}, channel="b")
        event = await next_event(sub, "broadcast")
        assert (event.stream_id, event.id) == ("b", sent)
        await channels.publish("a", "from the server")
        assert (await next_event(sub, "broadcast")).stream_id == "a"
        history = await sub.request(channel="b")
        assert [item.id for item in history] == [sent]
        assert sub.last_event_id is not None and "b=" in sub.last_event_id
    await settled(channels, "a", "b")


async def test_add_remove_and_the_last_end_stops_the_iteration(serve, transport: Transport) -> None:
    """add() brings a channel's events; remove() and close_channel end channels; then it stops."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport) as client, client.subscribe("a", "b") as sub:
        assert isinstance(sub, Streams)
        await sub.add("c")
        await eventually(lambda: "c" in sub.tokens)  # its init has come
        await channels.publish("c", "on c")
        event = await next_event(sub, "broadcast")
        assert (event.stream_id, event.message) == ("c", "on c")
        await sub.remove("a")
        end = await next_event(sub, "end")
        assert (end.stream_id, end.message) == ("a", {"status": "removed"})
        assert sub.channels == ["b", "c"]
        await channels.close_channel("b")
        await channels.close_channel("c")
        with anyio.fail_after(WAIT):
            ends = [event.stream_id async for event in sub if event.type == "end"]
        assert ends == ["b", "c"]
        with pytest.raises(ChannelError):
            await sub.add("d")


async def test_a_refused_stream_raises_at_async_with(serve, transport: Transport) -> None:
    """A refused channel refuses the subscription: ChannelError with its code."""
    channels = ChannelApp(secret=SECRET)
    await channels.close_channel("gone")
    base = await serve(channels)
    async with Client(base, transport=transport) as client:
        with pytest.raises(ChannelError) as refused:
            async with client.subscribe("a", "gone"):
                pass
        assert refused.value.code == 404


async def test_several_channels_resume_exactly_across_a_server_restart_on_redis(
    server_process, redis_url: str, redis_prefix: str, transport: Transport
) -> None:
    """Stop the server, publish on two channels of its successor: the client catches up."""
    port = free_port()
    command = [
        "-m", "channel_asgi", "serve", "--port", "{port}", "--redis", redis_url,
        "--redis-prefix", redis_prefix, "--secret", SECRET, "--log-level", "warning",
    ]  # fmt: skip
    first = server_process(command, port=port)
    async with (
        Client(first.base, transport=transport) as client,
        client.subscribe("x", "y", "z") as sub,
    ):
        assert isinstance(sub, Streams)
        tokens = dict(sub.tokens)
        for channel in ("x", "y"):
            await sub.publish(channel, channel=channel)
            await next_event(sub, "broadcast")
        os.kill(first.pid, signal.SIGTERM)
        first.process.wait(timeout=WAIT)
        second = server_process(command, port=port)
        missed: list[tuple[str, str]] = []
        async with httpx.AsyncClient(trust_env=False) as http:
            for channel in ("y", "x", "y"):
                reply = await http.post(
                    f"{second.base}/publish/{channel}",
                    params={"token": tokens[channel]},
                    json={"type": "broadcast", "message": "missed"},
                )
                assert reply.status_code == 200, reply.text
                missed.append((channel, reply.json()["id"]))
        got = [await next_event(sub, "broadcast") for _ in missed]
        assert sorted((e.stream_id, e.id) for e in got) == sorted(missed)
        assert sub.recovered is True
        assert sub.recovered_by == {"x": True, "y": True}
        assert sub.tokens["x"] != tokens["x"]

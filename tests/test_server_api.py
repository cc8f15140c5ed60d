"""The server-side API: publish, subscribe, viewer_count, presence, close/open, and the hooks."""

from __future__ import annotations

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp, Connection, Envelope, Reject
from channel_asgi.errors import NotFound

from .helpers import WAIT, eventually, publish, subscribe


async def test_publish_returns_the_event_id_of_a_broadcast_and_none_for_private(
    anyio_backend: str,
) -> None:
    """Broadcast ids are distinct and ordered; private returns None."""
    channels = ChannelApp()
    async with channels:
        first = await channels.publish("c", {"a": 1})
        second = await channels.publish("c", [1, 2], timestamp=3.5, author_id="host")
        assert first and second and first != second
        assert await channels.publish("c", "x", type="private", to_user_id="u") is None
        events = (await channels.storage.history("c")).events
        assert [event.id for event in events] == [first, second]


@pytest.mark.parametrize(
    ("channel", "kwargs"),
    [
        ("bad name", {}),
        ("", {}),
        ("ok", {"type": "request"}),
        ("ok", {"type": "private"}),
    ],
)
async def test_publish_refuses_bad_arguments_with_value_error(
    anyio_backend: str, channel: str, kwargs: dict[str, str]
) -> None:
    """Bad channel names, types and missing addressees are ValueErrors."""
    async with ChannelApp() as channels:
        with pytest.raises(ValueError):
            await channels.publish(channel, "m", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await channels.publish("ok", None)


async def test_server_side_subscriber_sees_broadcasts_and_presence_but_is_no_viewer(
    serve, client: httpx.AsyncClient
) -> None:
    """subscribe() yields decoded envelopes and does not change viewer_count."""
    channels = ChannelApp()
    base = await serve(channels)
    async with channels.subscribe("s") as events:
        assert await channels.viewer_count("s") == 0
        async with subscribe(client, f"{base}/subscribe/s") as sub:
            assert sub.init["message"]["viewer_count"] == 1
            with anyio.fail_after(WAIT):
                join = await events.__anext__()
            assert join.type == "system"
            assert join.message == {"status": "join", "user_id": sub.user_id, "viewer_count": 1}
            await publish(
                client, f"{base}/publish/s", sub.token, {"type": "broadcast", "message": 7}
            )
            with anyio.fail_after(WAIT):
                event = await events.__anext__()
            assert isinstance(event, Envelope)
            assert (event.type, event.message, event.author_id) == ("broadcast", 7, sub.user_id)
            assert event.id is not None
            assert event.stream_id == "s"


async def test_server_side_subscriber_can_resume_from_an_id(anyio_backend: str) -> None:
    """last_event_id replays what followed it before going live."""
    async with ChannelApp() as channels:
        ids = [await channels.publish("r", n) for n in range(4)]
        async with channels.subscribe("r", last_event_id=ids[1]) as events:
            await channels.publish("r", 4)
            got = []
            with anyio.fail_after(WAIT):
                async for event in events:
                    got.append(event.message)
                    if len(got) == 3:
                        break
        assert got == [2, 3, 4]


async def test_slow_server_side_subscriber_recovers_every_broadcast_from_history(
    anyio_backend: str,
) -> None:
    """Falling past max_buffer_bytes re-attaches and replays; nothing lost or repeated."""
    async with ChannelApp(max_buffer_bytes=4096, history_size=500) as channels:
        async with channels.subscribe("slow") as events:
            for n in range(300):
                await channels.publish("slow", {"n": n, "pad": "x" * 100})
            got = []
            with anyio.fail_after(WAIT):
                async for event in events:
                    got.append(event.message["n"])
                    if len(got) == 300:
                        break
        assert got == list(range(300))


async def test_viewer_count_counts_live_connections(serve, client: httpx.AsyncClient) -> None:
    """viewer_count rises and falls with the streams."""
    channels = ChannelApp()
    base = await serve(channels)
    assert await channels.viewer_count("v") == 0
    async with subscribe(client, f"{base}/subscribe/v"), subscribe(client, f"{base}/subscribe/v"):
        assert await channels.viewer_count("v") == 2
    await eventually(lambda: channels.viewer_count("v"), lambda n: n == 0)


async def test_presence_maps_each_user_to_their_live_connections(
    serve, client: httpx.AsyncClient
) -> None:
    """presence lists signed-in and anonymous users by the id init gave them; not server-side."""
    channels = ChannelApp(secret="p" * 40)
    base = await serve(channels)
    alice = {"authorization": f"Bearer {channels.issue_token('alice')}"}
    assert await channels.presence("room") == {}
    async with (
        channels.subscribe("room"),
        subscribe(client, f"{base}/subscribe/room", alice) as first,
        subscribe(client, f"{base}/subscribe/room", alice),
        subscribe(client, f"{base}/subscribe/room") as anonymous,
    ):
        assert first.user_id == "alice"
        assert await channels.presence("room") == {"alice": 2, anonymous.user_id: 1}
        assert await channels.presence("elsewhere") == {}
    await eventually(lambda: channels.presence("room"), lambda users: users == {})


@pytest.mark.parametrize("channel", ["", "a b", "x" * 201, 7])
async def test_presence_of_a_bad_channel_name_is_refused(channel: object) -> None:
    """The channel is checked as viewer_count checks it: ValueError, or TypeError for a non-str."""
    async with ChannelApp() as channels:
        with pytest.raises(TypeError if isinstance(channel, int) else ValueError):
            await channels.presence(channel)  # type: ignore[arg-type]


async def test_close_channel_ends_streams_and_refuses_until_reopened(
    serve, client: httpx.AsyncClient
) -> None:
    """end reaches subscribers, who are disconnected; then 404 until open_channel."""
    channels = ChannelApp()
    base = await serve(channels)
    kept = await channels.publish("live", "before")
    async with (
        subscribe(client, f"{base}/subscribe/live") as sub,
        channels.subscribe("live") as events,
    ):
        token = sub.token
        await channels.close_channel("live")
        end = await sub.stream.until("end")
        assert end.json["stream_id"] == "live"
        assert end.id is None
        assert await sub.stream.ended()
        with anyio.fail_after(WAIT):
            assert [event.type async for event in events] == ["end"]
    assert (await client.get(f"{base}/subscribe/live")).status_code == 404
    body = {"type": "broadcast", "message": 1}
    assert (await publish(client, f"{base}/publish/live", token, body)).status_code == 404
    with pytest.raises(NotFound):
        await channels.publish("live", "x")
    await channels.open_channel("live")
    async with subscribe(client, f"{base}/subscribe/live") as sub:
        assert (await publish(client, f"{base}/publish/live", sub.token, body)).status_code == 200
    assert (await channels.storage.history("live")).events[0].id == kept


async def test_connect_and_disconnect_hooks_get_the_connection(
    serve, client: httpx.AsyncClient
) -> None:
    """on_connect runs after init, on_disconnect after the client leaves."""
    channels = ChannelApp()
    seen: list[tuple[str, Connection]] = []

    @channels.on_connect
    async def connected(conn: Connection) -> None:
        seen.append(("connect", conn))

    @channels.on_disconnect
    async def disconnected(conn: Connection) -> None:
        seen.append(("disconnect", conn))

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/h") as sub:
        await eventually(lambda: seen)
    await eventually(lambda: len(seen) >= 2)
    assert [kind for kind, _ in seen] == ["connect", "disconnect"]
    conn = seen[0][1]
    assert (conn.user_id, conn.channel) == (sub.user_id, "h")
    assert seen[1][1] == conn


async def test_on_publish_can_reject_or_rewrite_a_message(serve, client: httpx.AsyncClient) -> None:
    """Reject becomes the reply; a changed message is what subscribers get."""
    channels = ChannelApp()

    @channels.on_publish
    async def moderate(envelope: Envelope, conn: Connection) -> None:
        if envelope.message == "spam":
            raise Reject(422, "No spam here")
        envelope.message = {"said": envelope.message, "by": conn.user_id}

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/m") as sub:
        url = f"{base}/publish/m"
        reply = await publish(client, url, sub.token, {"type": "broadcast", "message": "spam"})
        assert (reply.status_code, reply.json()) == (422, {"code": 422, "message": "No spam here"})
        reply = await publish(client, url, sub.token, {"type": "broadcast", "message": "hi"})
        assert reply.status_code == 200
        event = await sub.stream.until("broadcast")
        assert event.json["message"] == {"said": "hi", "by": sub.user_id}
    assert len((await channels.storage.history("m")).events) == 1


async def test_failing_or_hanging_hooks_do_not_break_the_channel(
    serve, client: httpx.AsyncClient
) -> None:
    """A raising connect hook is logged; a hanging publish hook times out with 504."""
    channels = ChannelApp(hook_timeout=0.2)

    @channels.on_connect
    async def broken(conn: Connection) -> None:
        raise RuntimeError("boom")

    @channels.on_publish
    async def slow(envelope: Envelope, conn: Connection) -> None:
        if envelope.message == "hang":
            await anyio.sleep_forever()

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/f") as sub:
        url = f"{base}/publish/f"
        reply = await publish(client, url, sub.token, {"type": "broadcast", "message": "hang"})
        assert reply.status_code == 504
        reply = await publish(client, url, sub.token, {"type": "broadcast", "message": "ok"})
        assert reply.status_code == 200
        assert (await sub.stream.until("broadcast")).json["message"] == "ok"


def test_hooks_must_be_async() -> None:
    """A plain function is refused when registered, not when it would run."""
    channels = ChannelApp()
    with pytest.raises(TypeError, match="async"):
        channels.on_connect(lambda conn: None)


async def test_on_publish_runs_for_requests_too(serve, client: httpx.AsyncClient) -> None:
    """A request publish passes the hooks (message None) and may be rejected like any other."""
    channels = ChannelApp()
    seen: list[tuple[str, object]] = []

    @channels.on_publish
    async def gate(envelope: Envelope, conn: Connection) -> None:
        seen.append((envelope.type, envelope.message))
        if envelope.type == "request":
            raise Reject(451, "History is not available here")

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/q") as sub:
        reply = await publish(client, f"{base}/publish/q", sub.token, {"type": "request"})
        assert (reply.status_code, reply.json()["message"]) == (
            451,
            "History is not available here",
        )
    assert seen == [("request", None)]

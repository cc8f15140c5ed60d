"""channel_asgi.client: subscribe, iterate, publish, request, reconnect, over SSE and WebSocket."""

from __future__ import annotations

import json
import logging
import os
import signal

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.client import ChannelError, Client, Envelope, Subscription, Transport

from .helpers import WAIT, asgi_body, free_port, subscribe

SECRET = "c" * 40

pytestmark = pytest.mark.parametrize("transport", ["sse", "ws"])


async def next_event(sub: Subscription, kind: str | None = None) -> Envelope:
    """The next iterated event (of ``kind``), within WAIT."""
    with anyio.fail_after(WAIT):
        async for event in sub:
            if kind is None or event.type == kind:
                return event
    raise AssertionError("the subscription ended")


async def test_subscribe_gives_user_token_and_events(serve, transport: Transport) -> None:
    """user_id and token come from init; iteration yields envelopes, never init."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport) as client, client.subscribe("room") as sub:
        assert sub.user_id and sub.token
        assert sub.recovered is None
        event_id = await channels.publish("room", {"hello": "world"}, author_id="host")
        event = await next_event(sub)
        assert isinstance(event, Envelope)
        assert (event.type, event.id, event.message, event.author_id, event.stream_id) == (
            "broadcast",
            event_id,
            {"hello": "world"},
            "host",
            "room",
        )


async def test_publish_returns_the_id_and_reaches_everyone(serve, transport: Transport) -> None:
    """A broadcast returns its id; a private reaches its user and echoes to the sender."""
    base = await serve(ChannelApp(secret=SECRET, widget_keys={"wk"}))
    async with Client(base, transport=transport, widget_key="wk") as client:
        async with client.subscribe("room") as alice, client.subscribe("room") as bob:
            event_id = await alice.publish({"text": "hi"}, timestamp=3.5)
            for sub in (alice, bob):
                event = await next_event(sub, "broadcast")
                assert (event.id, event.author_id, event.timestamp) == (
                    event_id,
                    alice.user_id,
                    3.5,
                )
            assert await alice.publish("psst", type="private", to_user_id=bob.user_id) is None
            for sub in (bob, alice):
                event = await next_event(sub, "private")
                assert (event.message, event.to_user_id) == ("psst", bob.user_id)


async def test_request_returns_the_history_and_is_not_iterated(serve, transport: Transport) -> None:
    """request() gives the retained broadcasts, oldest first, even split over several events."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    ids = [await channels.publish("big", {"n": n, "pad": "x" * 20000}) for n in range(30)]
    async with Client(base, transport=transport) as client, client.subscribe("big") as sub:
        history = await sub.request()
        assert [event.id for event in history] == ids
        assert all(isinstance(event, Envelope) for event in history)
        later = await channels.publish("big", "after")
        assert (await next_event(sub)).id == later  # no request event was iterated


async def test_refused_subscribe_raises_at_async_with(serve, transport: Transport) -> None:
    """A bad name, a closed channel or a bad identity token: ChannelError with code and message."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    await channels.close_channel("shut")
    async with Client(base, transport=transport) as client:
        for channel, code in (("bad name", 400), ("shut", 404)):
            with pytest.raises(ChannelError) as refused:
                async with client.subscribe(channel):
                    pass  # pragma: no cover
            assert refused.value.code == code
            assert refused.value.message
    async with Client(base, transport=transport, token="forged") as client:
        with pytest.raises(ChannelError) as refused:
            async with client.subscribe("room"):
                pass  # pragma: no cover
        assert refused.value.code == 401


async def test_refused_publish_raises_with_code_and_message(serve, transport: Transport) -> None:
    """The server's refusal becomes a ChannelError."""
    base = await serve(ChannelApp(secret=SECRET, widget_keys={"good"}))
    async with Client(base, transport=transport, widget_key="bad") as client:
        async with client.subscribe("room") as sub:
            with pytest.raises(ChannelError) as refused:
                await sub.publish("x")
            assert (refused.value.code, refused.value.message) == (
                403,
                "widget_key is not accepted",
            )


async def test_identity_token_subscribes_as_its_user(serve, transport: Transport) -> None:
    """Client(token=...) runs the subscription as the token's user."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport, token=channels.issue_token("ann")) as client:
        async with client.subscribe("room") as sub:
            assert sub.user_id == "ann"


async def test_iteration_ends_after_the_end_of_a_closed_channel(
    serve, transport: Transport
) -> None:
    """end is the last event; no reconnect follows."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport) as client, client.subscribe("live") as sub:
        await channels.publish("live", 1)
        await channels.close_channel("live")
        with anyio.fail_after(WAIT):
            kinds = [event.type async for event in sub]
        assert kinds == ["broadcast", "end"]


async def test_resumes_without_gap_across_a_server_restart_on_redis(
    server_process, transport: Transport, redis_url: str, redis_prefix: str
) -> None:
    """Stop the server, publish on its successor, and the client catches up exactly."""
    port = free_port()
    command = [
        "-m", "channel_asgi", "serve", "--port", "{port}", "--redis", redis_url,
        "--redis-prefix", redis_prefix, "--secret", SECRET, "--log-level", "warning",
    ]  # fmt: skip
    first = server_process(command, port=port)
    base = first.base
    async with Client(base, transport=transport) as client, client.subscribe("tv") as sub:
        token = sub.token
        before = await sub.publish({"n": 0})
        assert (await next_event(sub, "broadcast")).id == before
        os.kill(first.pid, signal.SIGTERM)
        first.process.wait(timeout=WAIT)
        second = server_process(command, port=port)
        async with httpx.AsyncClient(trust_env=False) as http:
            missed = []
            for n in (1, 2, 3):  # the old token still verifies: same secret
                reply = await http.post(
                    f"{second.base}/publish/tv",
                    params={"token": token},
                    content=json.dumps({"type": "broadcast", "message": {"n": n}}),
                    headers={"content-type": "application/json"},
                )
                assert reply.status_code == 200, reply.text
                missed.append(reply.json()["id"])
        got = [(await next_event(sub, "broadcast")).id for _ in range(3)]
        assert got == missed
        assert sub.recovered is True
        assert sub.token != token  # a new init came with the reconnect
        live = await sub.publish({"n": 4})
        assert (await next_event(sub, "broadcast")).id == live


async def test_client_and_raw_sse_agree(
    serve, client: httpx.AsyncClient, transport: Transport
) -> None:
    """What the client iterates is what a raw SSE subscriber receives."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/agree") as raw:
        async with Client(base, transport=transport) as own, own.subscribe("agree") as sub:
            await raw.stream.until("system")
            ids = [await channels.publish("agree", n) for n in range(3)]
            assert [(await next_event(sub, "broadcast")).id for _ in range(3)] == ids
            assert [(await raw.stream.until("broadcast")).id for _ in range(3)] == ids


async def test_errors_in_the_block_come_out_unchanged(serve, transport: Transport) -> None:
    """A ChannelError raised by publish inside `async with` is not wrapped in a group."""
    base = await serve(ChannelApp(secret=SECRET, widget_keys={"good"}))
    async with Client(base, transport=transport, widget_key="bad") as client:
        with pytest.raises(ChannelError) as refused:
            async with client.subscribe("room") as sub:
                await sub.publish("x")
        assert refused.value.code == 403
        with pytest.raises(KeyError):
            async with client.subscribe("room"):
                raise KeyError("mine")


async def test_unreachable_server_is_a_channel_error(transport: Transport) -> None:
    """Connection failures are ChannelError(503), on either transport."""
    async with Client(f"http://127.0.0.1:{free_port()}", transport=transport) as client:
        with pytest.raises(ChannelError) as refused:
            async with client.subscribe("room"):
                pass  # pragma: no cover
        assert refused.value.code == 503


class ForeignServer:
    """A server that is not channel_asgi: it speaks the wire protocol and relays events no reader
    can hold (a 5000-digit integer, ``1e999``), and strings with raw U+2028, U+2029 and U+0085.

    SSE at ``/subscribe/room``, WebSocket at ``/ws/room``; a ``request`` is answered with one good
    and one bad item. ``connections`` counts subscribes, so a reconnect would show.
    """

    SEPARATORS = "a\u2028b\u2029c\u0085d"

    def __init__(self) -> None:
        self.connections = 0
        self._requests: list[anyio.Event] = []

    def events(self) -> list[str]:
        def event(event_id: str, message: str) -> str:
            return (
                f'{{"id":"{event_id}","type":"broadcast","stream_id":"room","author_id":"x",'
                f'"message":{message},"timestamp":0}}'
            )

        return [
            '{"type":"init","stream_id":"room","message":{"user_id":"u1","token":"t1"}}',
            event("1-0", "9" * 5000),
            event("2-0", json.dumps(self.SEPARATORS, ensure_ascii=False)),
            event("3-0", '{"n":1e999}'),
            event("4-0", '"after"'),
        ]

    def request_reply(self) -> str:
        good = '{"id":"4-0","type":"broadcast","stream_id":"room","message":"after"}'
        bad = '{"id":"1-0","type":"broadcast","stream_id":"room","message":' + "9" * 5000 + "}"
        return '{"type":"request","stream_id":"room","message":[' + bad + "," + good + "]}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await self._websocket(receive, send)
        elif scope["method"] == "GET":
            await self._sse(receive, send)
        else:
            await self._publish(receive, send)

    async def _sse(self, receive, send) -> None:
        self.connections += 1
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for data in self.events():
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {data}\r\n\r\n".encode(),
                    "more_body": True,
                }
            )
        async with anyio.create_task_group() as tasks:

            async def replies() -> None:
                while True:
                    requested = anyio.Event()
                    self._requests.append(requested)
                    await requested.wait()
                    body = f"data: {self.request_reply()}\n\n: request-end\n\n".encode()
                    await send({"type": "http.response.body", "body": body, "more_body": True})

            tasks.start_soon(replies)
            while (await receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

    async def _publish(self, receive, send) -> None:
        body = await asgi_body(receive)
        if json.loads(body)["type"] == "request":
            for requested in self._requests:
                requested.set()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"code":200,"message":"OK"}'})

    async def _websocket(self, receive, send) -> None:
        await receive()  # websocket.connect
        self.connections += 1
        await send({"type": "websocket.accept"})
        for data in self.events():
            await send({"type": "websocket.send", "text": data})
        while (message := await receive())["type"] == "websocket.receive":
            frame = json.loads(message["text"])
            if frame.get("type") == "request":
                await send({"type": "websocket.send", "text": self.request_reply()})
            ack = {"type": "ack", "code": 200, "message": "OK", "ref": frame.get("ref")}
            await send({"type": "websocket.send", "text": json.dumps(ack, separators=(",", ":"))})


async def test_undecodable_events_from_any_server_are_logged_and_skipped(
    serve, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC 6.1: a warning names the event id; no reconnect, no replay; line separators kept."""
    caplog.set_level(logging.WARNING, logger="channel_asgi.client")
    server = ForeignServer()
    base = await serve(server)
    async with Client(base, transport=transport) as client, client.subscribe("room") as sub:
        first = await next_event(sub)
        assert (first.id, first.message) == ("2-0", ForeignServer.SEPARATORS)
        second = await next_event(sub)
        assert (second.id, second.message) == ("4-0", "after")
        assert sub.last_event_id == "4-0"
        history = await sub.request()
        assert [(event.id, event.message) for event in history] == [("4-0", "after")]
        assert server.connections == 1  # no reconnect
    skipped = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(skipped) == 3, skipped
    assert "Skipped event 1-0" in skipped[0] and "Skipped event 3-0" in skipped[1]
    assert "1-0" in skipped[2] and "request reply" in skipped[2]


async def test_raw_unicode_line_separators_reach_the_client_whole(
    serve, transport: Transport
) -> None:
    """U+2028, U+2029 and U+0085 are not SSE line ends: the event arrives in one piece."""
    base = await serve(ChannelApp(secret=SECRET))
    text = "x\u2028y\u2029z\u0085!"
    async with (
        Client(base, transport=transport) as client,
        client.subscribe("room") as sub,
        httpx.AsyncClient(trust_env=False, timeout=WAIT) as http,
    ):
        body = '{"type":"broadcast","message":{"text":"' + text + '"}}'
        reply = await http.post(
            f"{base}/publish/room",
            params={"token": sub.token},
            content=body.encode(),  # raw UTF-8, as JSON.stringify leaves them
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 200
        event = await next_event(sub, "broadcast")
        assert event.message == {"text": text}
        await sub.publish("after")
        assert (await next_event(sub, "broadcast")).message == "after"

"""The number rule (SPEC 6.1): a number no reader can hold is refused with 422, everywhere.

Integers must lie in [-2^63, 2^64) and floats be finite. A publish breaking that is refused on
HTTP, on a WebSocket frame and from ``channels.publish()``, with the path of the number, and is
neither stored nor delivered. The edges of the range are accepted and read back exactly.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from channel_asgi import ChannelApp
from channel_asgi.client import Client, Transport
from channel_asgi.errors import UnprocessableEntity
from channel_asgi.numbers import check_json, encode_checked, fits
from channel_asgi.protocol import encode_event

from .helpers import WAIT, publish, subscribe
from .test_websocket import recv, ws_subscribe

SECRET = "n" * 40
NINES = "9" * 5000

#: (a JSON message, the path of its first bad number)
POISON = [
    (NINES, "$.message"),
    ("1e999", "$.message"),
    ("-1e999", "$.message"),
    (str(2**64), "$.message"),
    (str(-(2**63) - 1), "$.message"),
    ('{"a": [1, 2, 1e999]}', "$.message.a[2]"),
    ('{"a b": {"c": [0, ' + NINES + "]}}", '$.message["a b"].c[1]'),
    ('[{"x": 1}, {"x": 18446744073709551616}]', "$.message[1].x"),
]

#: The edges of the range: accepted, and read back as they were sent.
EDGES = [2**64 - 1, -(2**63), 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 0]


# -- the rule itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "path"), POISON)
def test_check_json_names_the_path_of_the_first_bad_number(message: str, path: str) -> None:
    body = ('{"type": "broadcast", "message": ' + message + "}").encode()
    assert not fits(body)
    with pytest.raises(UnprocessableEntity) as caught:
        check_json(body)
    assert caught.value.status == 422
    assert f"`{path}`" in caught.value.message
    assert len(caught.value.message) < 200  # a 5000-digit number is not echoed whole


def test_the_edges_fit_and_broken_json_is_left_to_the_parser() -> None:
    assert fits(msgspec.json.encode(EDGES))
    assert fits(b"{not json")
    check_json(b"[1, 2.5, -3]")


def test_encode_checked_refuses_what_json_would_write_as_null() -> None:
    assert encode_checked({"a": [1, None]}) == b'{"a":[1,null]}'
    for value, path in [
        ({"a": [1, math.inf]}, "$.a[1]"),
        ((0, math.nan), "$[1]"),
        ({"n": 2**64}, "$.n"),
        ([-(2**63) - 1], "$[0]"),
    ]:
        with pytest.raises(UnprocessableEntity, match=path.replace("[", r"\[").replace("$", r"\$")):
            encode_checked(value)


# -- HTTP, WebSocket and channels.publish() ------------------------------------------------------


@pytest.mark.parametrize(("message", "path"), POISON)
async def test_http_publish_of_a_bad_number_is_422_and_never_stored(
    serve, client: httpx.AsyncClient, message: str, path: str
) -> None:
    base = await serve(ChannelApp(secret=SECRET))
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        body = '{"type": "broadcast", "widget_key": "", "message": ' + message + "}"
        reply = await client.post(
            f"{base}/publish/room",
            params={"token": sub.token},
            content=body,
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 422, reply.text
        assert reply.json()["code"] == 422
        assert f"`{path}`" in reply.json()["message"]
        ok = await publish(
            client, f"{base}/publish/room", sub.token, {"type": "broadcast", "message": "after"}
        )
        assert ok.status_code == 200
        event = await sub.stream.until("broadcast")
        assert event.json["message"] == "after"  # the refused one was never delivered
        await publish(client, f"{base}/publish/room", sub.token, {"type": "request"})
        history = await sub.stream.until("request")
        assert [item["message"] for item in history.json["message"]] == ["after"]


async def test_a_bad_number_in_any_field_is_422_before_schema_errors(
    serve, client: httpx.AsyncClient
) -> None:
    base = await serve(ChannelApp(secret=SECRET))
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        for body, path in [
            ('{"type": "broadcast", "message": 1, "timestamp": 1e400}', "$.timestamp"),
            ('{"type": "request", "extra": ' + str(2**70) + "}", "$.extra"),
            ('{"type": "nope", "message": [1e999]}', "$.message[0]"),
        ]:
            reply = await client.post(
                f"{base}/publish/room",
                params={"token": sub.token},
                content=body,
                headers={"content-type": "application/json"},
            )
            assert reply.status_code == 422, (body, reply.text)
            assert f"`{path}`" in reply.json()["message"]


async def test_the_edges_of_the_range_are_delivered_exactly(
    serve, client: httpx.AsyncClient
) -> None:
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        reply = await publish(
            client, f"{base}/publish/room", sub.token, {"type": "broadcast", "message": EDGES}
        )
        assert reply.status_code == 200
        event = await sub.stream.until("broadcast")
        assert event.json["message"] == EDGES
        assert await channels.publish("room", {"edges": EDGES}) is not None
        assert (await sub.stream.until("broadcast")).json["message"] == {"edges": EDGES}


async def test_websocket_frame_with_a_bad_number_is_422(serve) -> None:
    base = await serve(ChannelApp(secret=SECRET))
    async with ws_subscribe(base, "room") as (ws, _init):
        await ws.send('{"type": "broadcast", "ref": 7, "message": {"n": ' + NINES + "}}")
        reply = json.loads(await recv(ws))
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", 422, 7)
        assert "`$.message.n`" in reply["message"]
        # A bad number in the ref itself is not echoed: the reply must be readable by anyone.
        await ws.send('{"type": "broadcast", "ref": ' + NINES + ', "message": 1}')
        reply = json.loads(await recv(ws))
        assert (reply["type"], reply["code"]) == ("error", 422)
        assert "ref" not in reply and "`$.ref`" in reply["message"]
        await ws.send('{"type": "broadcast", "ref": 8, "message": "after"}')
        frames = [json.loads(await recv(ws)) for _ in range(2)]
        kinds = sorted(frame["type"] for frame in frames)
        assert kinds == ["ack", "broadcast"]
        assert next(f for f in frames if f["type"] == "broadcast")["message"] == "after"


async def test_channels_publish_refuses_a_bad_number_as_a_value_error() -> None:
    channels = ChannelApp(secret=SECRET)
    async with channels:
        with pytest.raises(UnprocessableEntity, match=r"`\$\.message\.a\[0\]`"):
            await channels.publish("room", {"a": [2**64]})
        with pytest.raises(ValueError, match=r"`\$\.message\[1\]`"):
            await channels.publish("room", [1, math.inf])
        with pytest.raises(UnprocessableEntity, match="timestamp"):
            await channels.publish("room", "x", timestamp=math.inf)
        events: list[Any] = []
        async with channels.subscribe("room", last_event_id="0-0") as stream:
            event_id = await channels.publish("room", "after")
            with anyio.fail_after(WAIT):
                async for event in stream:
                    events.append(event.message)
                    if event.id == event_id:
                        break
        assert events == ["after"]


async def test_a_hook_that_sets_a_bad_number_is_a_500(serve, client: httpx.AsyncClient) -> None:
    channels = ChannelApp(secret=SECRET)

    @channels.on_publish
    async def poison(envelope: Any, connection: Any) -> None:
        envelope.message = {"n": 2**80}

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        reply = await publish(
            client, f"{base}/publish/room", sub.token, {"type": "broadcast", "message": 1}
        )
        assert reply.status_code == 500
        assert "`$.message.n`" in reply.json()["message"]


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_client_goes_on_after_a_refused_poison_publish(
    serve, transport: Transport
) -> None:
    """The report's reproduction: the poison is refused, and "after" still arrives."""
    base = await serve(ChannelApp(secret=SECRET))
    async with (
        Client(base, transport=transport) as channel_client,
        channel_client.subscribe("room") as sub,
        httpx.AsyncClient(trust_env=False, timeout=WAIT) as http,
    ):
        reply = await http.post(
            f"{base}/publish/room",
            params={"token": sub.token},
            content='{"type":"broadcast","message":' + NINES + ',"widget_key":""}',
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 422
        await sub.publish("after")
        with anyio.fail_after(WAIT):
            async for event in sub:
                if event.type == "broadcast":
                    assert event.message == "after"
                    break
        assert [event.message for event in await sub.request()] == ["after"]


async def test_server_side_subscribers_skip_an_event_stored_before_the_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """History written by an older release may hold such a number: it is logged and skipped."""
    caplog.set_level(logging.WARNING, logger="channel_asgi.subscription")
    channels = ChannelApp(secret=SECRET)
    async with channels:
        # Straight into the storage, past the check, as an older release stored it.
        bad = encode_event("broadcast", "room", msgspec.Raw(NINES.encode()))
        bad_id = await channels.storage.append("room", bad, keep=1000)
        good_id = await channels.publish("room", "after")
        async with channels.subscribe("room", last_event_id="0-0") as stream:
            with anyio.fail_after(WAIT):
                event = await stream.__anext__()
        assert (event.id, event.message) == (good_id, "after")
    assert any(f"Skipped event {bad_id}" in record.getMessage() for record in caplog.records)

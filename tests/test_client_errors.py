"""The Python client's own refusals: bad arguments, and servers that answer what it cannot read."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from channel_asgi.client import ChannelError, Client


def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="transport"):
        Client("http://127.0.0.1:1", transport="smoke")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http"):
        Client("ftp://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="async with"):
        _ = Client("http://127.0.0.1:1").http


def _server(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    """An HTTP client whose requests ``handler`` answers (no stream is opened)."""
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_a_refusal_that_is_not_json_keeps_its_status_and_text() -> None:
    """A proxy in front of the server may answer with its own page."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<h1>Bad Gateway</h1>")

    async with _server(handler) as http, Client("http://proxy.test", http=http) as client:
        with pytest.raises(ChannelError) as caught:
            async with client.subscribe("room"):
                pytest.fail("subscribed through a failing proxy")  # pragma: no cover
    assert (caught.value.code, caught.value.message) == (502, "<h1>Bad Gateway</h1>")


async def test_publish_arguments_and_an_unreachable_publish() -> None:
    init = b'data: {"type":"init","stream_id":"room","message":{"user_id":"u1","token":"t1"}}\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, content=init, headers={"content-type": "text/event-stream"})
        raise httpx.ConnectError("connection refused", request=request)

    async with (
        _server(handler) as http,
        Client("http://gone.test", http=http) as client,
        client.subscribe("room") as sub,
    ):
        with pytest.raises(ValueError, match="None"):
            await sub.publish(None)
        with pytest.raises(ValueError, match="to_user_id"):
            await sub.publish("psst", type="private")
        with pytest.raises(ChannelError) as caught:
            await sub.publish("hello")
        assert caught.value.code == 503

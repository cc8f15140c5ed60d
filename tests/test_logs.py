"""What an operator reads in the log: one line per refused or failed request, at the right level."""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote

import httpx
import pytest
import websockets

from channel_asgi import ChannelApp
from channel_asgi.storage import StorageUnreachable

from .helpers import WAIT, DownStorage, publish, subscribe

SECRET = "l" * 40
REQUESTS = "channel_asgi.requests"


def lines(caplog: pytest.LogCaptureFixture, logger: str = REQUESTS) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == logger]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every level of every channel_asgi logger."""
    caplog.set_level(logging.DEBUG, logger="channel_asgi")
    return caplog


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        pytest.param("POST", "/publish/c?token=secret-token", 401, "token", id="forged-token"),
        pytest.param("GET", "/nope", 404, "No route", id="unknown-path"),
        pytest.param("DELETE", "/subscribe/c", 405, "Method", id="wrong-method"),
        pytest.param("GET", "/subscribe/a%20b", 400, "Channel name", id="bad-channel"),
    ],
)
async def test_a_client_mistake_is_one_info_line_without_traceback(
    client: httpx.AsyncClient,
    serve,
    log: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
    says: str,
) -> None:
    """Method, path (never the query, so never a token), client, status and reason, at INFO."""
    base = await serve(ChannelApp(secret=SECRET))
    reply = await client.request(method, f"{base}{path}", json={"type": "broadcast", "message": 1})
    assert reply.status_code == status
    [line] = lines(log)
    assert line.levelno == logging.INFO
    assert line.exc_info is None
    text = line.getMessage()
    assert text.startswith(f"{method} {unquote(path.split('?')[0])} from 127.0.0.1: {status} ")
    assert says in text
    assert "secret-token" not in text


async def test_a_path_with_a_line_break_cannot_forge_a_log_line(
    client: httpx.AsyncClient, serve, log: pytest.LogCaptureFixture
) -> None:
    """A percent-encoded line break in the path is logged escaped, on one line."""
    base = await serve(ChannelApp(secret=SECRET))
    assert (await client.get(f"{base}/x%0AINFO forged")).status_code == 404
    [line] = lines(log)
    assert "\n" not in line.getMessage()
    assert line.getMessage().startswith("GET '/x\\nINFO forged' from 127.0.0.1: 404 ")


async def test_a_storage_outage_is_one_warning_line_per_request(
    client: httpx.AsyncClient, serve, log: pytest.LogCaptureFixture
) -> None:
    """A 503 is the server's failure: WARNING, the storage's reason, no traceback."""
    storage = DownStorage()
    base = await serve(ChannelApp(storage=storage, secret=SECRET))
    async with subscribe(client, f"{base}/subscribe/s") as sub:
        storage.failure = StorageUnreachable("Redis is unavailable (append): refused")
        for _ in range(2):
            reply = await publish(
                client, f"{base}/publish/s", sub.token, {"type": "broadcast", "message": 1}
            )
            assert reply.status_code == 503
    refused = lines(log)
    assert len(refused) == 2
    assert {record.levelno for record in refused} == {logging.WARNING}
    assert all(record.exc_info is None for record in refused)
    assert "503 Redis is unavailable (append): refused" in refused[0].getMessage()


async def test_a_refused_websocket_frame_is_logged_like_a_refused_publish(
    serve, log: pytest.LogCaptureFixture
) -> None:
    """A frame answered with an error is one INFO line naming the WebSocket's channel."""
    base = await serve(ChannelApp(secret=SECRET, widget_keys={"wk"}))
    url = base.replace("http://", "ws://") + "/ws/f"
    async with websockets.connect(url, open_timeout=WAIT) as ws:
        await ws.recv()  # init
        await ws.send(json.dumps({"type": "broadcast", "message": 1}))
        assert json.loads(await ws.recv())["code"] == 403
    [line] = lines(log)
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith("WS frame /ws/f from 127.0.0.1: 403 Missing widget_key")


async def test_a_failing_hook_logs_its_traceback_and_the_request_its_line(
    client: httpx.AsyncClient, serve, log: pytest.LogCaptureFixture
) -> None:
    """The hook's bug is an ERROR with the traceback; the publish it broke is a 500 WARNING line."""
    channels = ChannelApp(secret=SECRET)

    @channels.on_publish
    async def buggy(envelope, conn) -> None:
        raise RuntimeError("a bug in the hook")

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/b") as sub:
        reply = await publish(
            client, f"{base}/publish/b", sub.token, {"type": "broadcast", "message": 1}
        )
        assert reply.status_code == 500
    [hook] = lines(log, "channel_asgi")
    assert hook.levelno == logging.ERROR and hook.exc_info is not None
    assert "on_publish hook" in hook.getMessage()
    [line] = lines(log)
    assert (line.levelno, line.exc_info) == (logging.WARNING, None)
    assert "500 on_publish hook failed" in line.getMessage()


async def test_nothing_is_logged_per_delivery(
    client: httpx.AsyncClient, serve, log: pytest.LogCaptureFixture
) -> None:
    """Subscribing, 50 broadcasts to two subscribers and leaving log nothing at any level."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/quiet") as a:
        async with subscribe(client, f"{base}/subscribe/quiet") as b:
            for n in range(50):
                reply = await publish(
                    client, f"{base}/publish/quiet", a.token, {"type": "broadcast", "message": n}
                )
                assert reply.status_code == 200
            for sub in (a, b):
                for _ in range(50):
                    await sub.stream.until("broadcast")
    assert [r.getMessage() for r in log.records if r.name.startswith("channel_asgi")] == []

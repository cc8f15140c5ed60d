"""The protocol under trio: hypercorn's trio worker serving a top-level ChannelApp.

Under trio, the app starts with ``lifespan`` (or ``async with channels:``), and its connections
run on anyio alone (``writer.run_connection``'s task group). MemoryStorage only: redis-py's
asyncio client needs asyncio.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from .conftest import ServerProcess, stop_server_process
from .helpers import WAIT, publish, subscribe
from .test_servers import chat, fresh, recv_json, start

pytest.importorskip("trio")

TRIO = ["-m", "hypercorn", "-k", "trio", "{app}", "--bind", "127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def trio_server() -> Iterator[str]:
    process: ServerProcess = start("hypercorn", "tests.server_apps:channels", args=TRIO)
    try:
        yield process.base
    finally:
        stop_server_process(process)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as client:
        yield client


async def test_sse_streams_broadcasts_private_events_and_history(
    trio_server: str, http: httpx.AsyncClient
) -> None:
    """init, live broadcasts, a private message, a request reply, and the leave of a peer."""
    channel = fresh("trio")
    async with subscribe(http, f"{trio_server}/subscribe/{channel}") as first:
        async with subscribe(http, f"{trio_server}/subscribe/{channel}") as second:
            assert second.init["message"]["viewer_count"] == 2
            url = f"{trio_server}/publish/{channel}"
            sent = await publish(http, url, first.token, chat("hello"))
            assert sent.status_code == 200, sent.text
            for sub in (first, second):
                event = await sub.stream.until("broadcast")
                assert (event.id, event.json["message"]["text"]) == (sent.json()["id"], "hello")
            private = {"type": "private", "to_user_id": second.user_id, "message": "psst"}
            assert (await publish(http, url, first.token, private)).status_code == 200
            assert (await second.stream.until("private")).json["message"] == "psst"
            assert (await publish(http, url, second.token, {"type": "request"})).status_code == 200
            reply = await second.stream.until("request")
            assert [item["id"] for item in reply.json["message"]] == [sent.json()["id"]]
        leave = (await first.stream.until("system")).json["message"]
        assert (leave["status"], leave["viewer_count"]) == ("leave", 1)


async def test_websocket_sends_and_receives(trio_server: str, http: httpx.AsyncClient) -> None:
    """init, an acked publish, and the same broadcast on SSE."""
    channel = fresh("trio-ws")
    async with subscribe(http, f"{trio_server}/subscribe/{channel}") as sse:
        ws_url = "ws" + trio_server[len("http") :] + f"/ws/{channel}"
        async with websockets.connect(ws_url, open_timeout=WAIT) as ws:
            init = await recv_json(ws)
            assert (init["type"], init["message"]["viewer_count"]) == ("init", 2)
            await ws.send(json.dumps({**chat("over ws"), "ref": 1}))
            frame = await recv_json(ws)
            while frame["type"] != "ack":
                frame = await recv_json(ws)
            assert (frame["code"], frame["ref"]) == (200, 1)
            event = await sse.stream.until("broadcast")
            assert (event.id, event.json["message"]["text"]) == (frame["id"], "over ws")


async def test_refusals_are_json_not_empty_500s(trio_server: str, http: httpx.AsyncClient) -> None:
    """A closed or badly named channel answers its usual JSON refusal under trio too."""
    response = await http.get(f"{trio_server}/subscribe/bad%20name")
    assert response.status_code == 400
    assert response.json()["code"] == 400


async def test_a_mounted_app_without_lifespan_says_how_to_start_it(
    http: httpx.AsyncClient,
) -> None:
    """FastAPI passes no lifespan on, and the first-use start needs asyncio: a 500 that says
    what to do, never an empty one."""
    process = start("hypercorn", "tests.server_apps:fastapi", args=TRIO)
    try:
        response = await http.get(f"{process.base}/channel/subscribe/x")
    finally:
        stop_server_process(process)
    assert response.status_code == 500
    assert "lifespan" in response.json()["message"]

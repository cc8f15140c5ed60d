"""Every host in ``examples/`` serves the channels under ``/channel`` and keeps its own routes.

Each test starts one example the way its docstring says (``uvicorn <module>:<app>``) in a child
process and speaks to it over real HTTP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import httpx
import pytest
import websockets

from ..helpers import publish, subscribe

if TYPE_CHECKING:
    from ..conftest import ServerProcess

StartServer = Callable[..., "ServerProcess"]

ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Example:
    """An example host: what uvicorn serves, with which lifespan mode, and its page's heading."""

    app: str
    lifespan: str
    heading: str


EXAMPLES: Final = [
    pytest.param(Example("examples.fastapi_app.main:app", "on", "FastAPI"), id="fastapi"),
    pytest.param(Example("examples.starlette_app.main:app", "on", "Starlette"), id="starlette"),
    pytest.param(Example("examples.quart_app.main:app", "on", "Quart"), id="quart"),
    # Django's ASGI handler refuses the lifespan protocol.
    pytest.param(Example("examples.django_project.asgi:application", "off", "Django"), id="django"),
]


@pytest.fixture(params=EXAMPLES)
def example(request: pytest.FixtureRequest) -> Example:
    """One of the example hosts."""
    assert isinstance(request.param, Example)
    return request.param


@pytest.fixture
def base(example: Example, server_process: StartServer) -> str:
    """Serve ``example`` with uvicorn in a child process; return its base URL."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = ["-m", "uvicorn", example.app, "--port", "{port}", "--lifespan", example.lifespan]
    return server_process([*command, "--log-level", "warning"], env={"PYTHONPATH": path}).base


def is_channel_reply(response: httpx.Response) -> bool:
    """Return whether ``response`` is a channel_asgi refusal (JSON ``{"code", "message"}``)."""
    try:
        body = response.json()
    except json.JSONDecodeError:
        return False
    return isinstance(body, dict) and set(body) == {"code", "message"}


async def test_broadcast_reaches_both_subscribers_and_request_returns_it(
    base: str, client: httpx.AsyncClient
) -> None:
    """Two subscribers get tokens, a broadcast reaches both, and ``request`` replays it."""
    channel = f"{base}/channel"
    async with (
        subscribe(client, f"{channel}/subscribe/room") as first,
        subscribe(client, f"{channel}/subscribe/room") as second,
    ):
        assert first.token and second.token and first.token != second.token
        body = {"type": "broadcast", "message": {"text": "hello"}}
        reply = await publish(client, f"{channel}/publish/room", first.token, body)
        assert reply.status_code == 200, reply.text
        event_id = reply.json()["id"]
        for subscriber in (first, second):
            event = await subscriber.stream.until("broadcast")
            assert event.id == event_id
            assert event.json["author_id"] == first.user_id
            assert event.json["message"] == {"text": "hello"}

        reply = await publish(client, f"{channel}/publish/room", second.token, {"type": "request"})
        assert reply.status_code == 200, reply.text
        history = (await second.stream.until("request")).json["message"]
        assert [(item["id"], item["message"]) for item in history] == [
            (event_id, {"text": "hello"})
        ]


async def test_host_view_publish_reaches_subscribers(base: str, client: httpx.AsyncClient) -> None:
    """The host's ``POST /announce`` view emits a broadcast from author ``"0"`` to the lobby."""
    page = await client.get(f"{base}/")  # Django's page sets the CSRF cookie its views check
    assert page.status_code == 200, page.text
    csrf = {"X-CSRFToken": client.cookies.get("csrftoken") or ""}  # the others ignore it
    async with subscribe(client, f"{base}/channel/subscribe/lobby") as subscriber:
        assert (await client.get(f"{base}/status")).json()["viewers"] == 1
        reply = await client.post(f"{base}/announce", json={"text": "from a view"}, headers=csrf)
        assert reply.status_code == 200, reply.text
        event = await subscriber.stream.until("broadcast")
        assert event.id == reply.json()["id"]
        assert event.json["author_id"] == "0"
        assert event.json["message"] == {"text": "from a view"}


async def test_host_keeps_its_page_startup_and_paths_outside_the_prefix(
    example: Example, base: str, client: httpx.AsyncClient
) -> None:
    """The host's page and startup work, and only paths under ``/channel`` reach the channels."""
    page = await client.get(f"{base}/")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert f"<h1>{example.heading} + channel_asgi</h1>" in page.text
    assert (await client.get(f"{base}/status")).json() == {"started": True, "viewers": 0}

    outside = await client.get(f"{base}/channelx")
    assert outside.status_code == 404
    assert not is_channel_reply(outside), outside.text
    inside = await client.get(f"{base}/channel/nope")
    assert inside.status_code == 404
    assert is_channel_reply(inside), inside.text


async def test_websocket_route_works_inside_the_host(base: str, client: httpx.AsyncClient) -> None:
    """{prefix}/ws/{channel} is served through the host's mount or middleware, both ways."""
    ws_base = "ws" + base[len("http") :]
    async with (
        websockets.connect(f"{ws_base}/channel/ws/room", open_timeout=10) as ws,
        subscribe(client, f"{base}/channel/subscribe/room") as sse,
    ):
        with anyio.fail_after(10):
            init = json.loads(await ws.recv())
            assert init["type"] == "init"
            await ws.send(json.dumps({"type": "broadcast", "message": "over ws", "ref": 1}))
            frames = [json.loads(await ws.recv()) for _ in range(3)]  # SSE's join, event, ack
        event = await sse.stream.until("broadcast")
        assert event.json["message"] == "over ws"
        ack = next(frame for frame in frames if frame["type"] == "ack")
        assert (ack["ref"], ack["id"]) == (1, event.id)

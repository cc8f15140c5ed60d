"""The protocol on every mainstream ASGI server: uvicorn, hypercorn, granian, daphne, gunicorn.

Each server runs ``tests/server_apps.py`` in a child process on a free loopback port, once per
module (the tests use channels of their own): a FastAPI host with the channels mounted under
``/channel``, as users run it. Gunicorn runs two uvicorn workers on Redis, with a key prefix of
this module's own. The checks are the core of the other modules, not all of them: SSE framing,
publishing, resuming, the WebSocket route, refusals, slow readers, the host's own routes, and
the Python client; then stopping and restarting, which is each server's own business.

Where a server differs, the test says so and docs/servers.md explains it: daphne has no
``websocket.http.response`` (a refusal before the upgrade is its 403), answers a malformed
multipart body itself (400), and never makes ``send`` wait.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from channel_asgi.client import Client
from channel_asgi.client_streams import Streams
from channel_asgi.servers import identify
from channel_asgi.storage import RedisStorage

from .conftest import (
    ServerProcess,
    drop_redis_keys,
    new_redis_prefix,
    start_server_process,
    stop_server_process,
)
from .helpers import WAIT, EventStream, eventually, free_port, publish, redis_answers, subscribe

ROOT: Final = Path(__file__).resolve().parent.parent
SECRET: Final = "servers-test-secret-0123456789abcdef"

#: How each server runs the ASGI app ``{app}`` on 127.0.0.1:{port}, as docs/servers.md shows.
SERVERS: Final = {
    "uvicorn": ["-m", "uvicorn", "{app}", "--port", "{port}", "--log-level", "warning"],
    "hypercorn": ["-m", "hypercorn", "{app}", "--bind", "127.0.0.1:{port}"],
    "granian": [
        "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
        "--log-level", "warning", "{app}",
    ],
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "{app}"],
    "gunicorn": [
        "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
        "-b", "127.0.0.1:{port}", "{app}",
    ],
}  # fmt: skip
#: Servers that run several worker processes, and so need a shared storage.
ON_REDIS: Final = frozenset({"gunicorn"})
#: Servers without the ``websocket.http.response`` extension.
NO_WS_HTTP_RESPONSE: Final = frozenset({"daphne"})
#: Servers whose ``send`` never waits (channel_asgi.servers.UNPACED).
UNPACED: Final = frozenset({"daphne"})

OPTIONS: Final = {"heartbeat": 1.0, "max_buffer_bytes": 262144, "history_size": 10}


@dataclass
class Site:
    """One server running the FastAPI host, its channels at ``{base}``."""

    server: str
    process: ServerProcess

    @property
    def root(self) -> str:
        return self.process.base

    @property
    def base(self) -> str:
        return f"{self.process.base}/channel"

    @property
    def ws_base(self) -> str:
        return "ws" + self.base[len("http") :]


def start(
    server: str,
    app: str,
    *,
    redis_url: str | None = None,
    prefix: str = "",
    port: int | None = None,
    args: list[str] | None = None,
    **options: Any,
) -> ServerProcess:
    """Start ``server`` serving ``app`` (``module:attribute``) with these ChannelApp options.

    ``args`` replaces the server's command line of ``SERVERS``.
    """
    values: dict[str, Any] = {**OPTIONS, **options}
    if redis_url is not None:
        values.update(redis=redis_url, redis_prefix=prefix, secret=SECRET)
    env = {
        "CHANNEL_ASGI_CLI_OPTIONS": json.dumps(values),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [arg.replace("{app}", app) for arg in args or SERVERS[server]]
    return start_server_process(command, env, port)


@pytest.fixture(scope="module")
def redis_for_workers() -> Iterator[tuple[str, str]]:
    """The machine's Redis and a key prefix of this module's own, cleaned up afterwards."""
    if not redis_answers():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (scripts/setup starts it)")
    url, prefix = "redis://127.0.0.1:6379/0", new_redis_prefix()
    yield url, prefix
    drop_redis_keys(url, prefix)


@pytest.fixture(scope="module", params=list(SERVERS))
def site(request: pytest.FixtureRequest, redis_for_workers: tuple[str, str]) -> Iterator[Site]:
    """The FastAPI host with mounted channels, on each server in turn."""
    server: str = request.param
    url, prefix = redis_for_workers
    if server in ON_REDIS:
        process = start(server, "tests.server_apps:fastapi", redis_url=url, prefix=prefix)
    else:
        process = start(server, "tests.server_apps:fastapi")
    try:
        yield Site(server, process)
    finally:
        stop_server_process(process)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as client:
        yield client


def fresh(name: str) -> str:
    """A channel name no other test (or earlier run on Redis) has used."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text, **extra}}


# -- SSE and publishing ------------------------------------------------------------------------


async def test_subscribe_publish_private_request_and_heartbeat(
    site: Site, http: httpx.AsyncClient
) -> None:
    """The SSE stream is framed as the seeds expect, and every publish type arrives."""
    channel = fresh("sse")
    async with subscribe(http, f"{site.base}/subscribe/{channel}") as first:
        headers = first.stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert first.stream.retry == 3000
        assert first.init["message"]["viewer_count"] == 1
        async with subscribe(http, f"{site.base}/subscribe/{channel}") as second:
            assert second.init["message"]["viewer_count"] == 2
            join = (await first.stream.until("system")).json["message"]
            assert (join["status"], join["viewer_count"]) == ("join", 2)

            url = f"{site.base}/publish/{channel}"
            reply = await publish(http, url, second.token, chat("hello"))
            assert reply.status_code == 200, reply.text
            assert reply.json()["code"] == 200
            event_id = reply.json()["id"]
            for sub in (first, second):
                event = await sub.stream.until("broadcast")
                assert event.id == event_id == event.json["id"]
                assert event.json["author_id"] == second.user_id
                assert event.json["message"] == {"text": "hello"}

            private = {"type": "private", "message": "psst", "to_user_id": first.user_id}
            assert (await publish(http, url, second.token, private)).status_code == 200
            for sub in (first, second):  # the addressee, and the echo to the sender
                event = await sub.stream.until("private")
                assert event.id is None and event.json["to_user_id"] == first.user_id

            assert (await publish(http, url, first.token, {"type": "request"})).status_code == 200
            history = (await first.stream.until("request")).json["message"]
            assert [item["id"] for item in history] == [event_id]

            announced = await http.post(f"{site.root}/announce/{channel}", json={"text": "hi"})
            assert announced.status_code == 200, announced.text
            event = await second.stream.until("broadcast")
            assert (event.id, event.json["author_id"]) == (announced.json()["id"], "0")

            ping = await second.stream.next(comments=True)
            while ping.comment is None:
                ping = await second.stream.next(comments=True)
            assert ping.comment == "ping"
        leave = (await first.stream.until("system")).json["message"]
        assert (leave["status"], leave["viewer_count"]) == ("leave", 1)
    host = await http.get(f"{site.root}/")
    assert host.json() == {"host": "fastapi"}


async def test_resume_with_last_event_id_replays_what_was_missed(
    site: Site, http: httpx.AsyncClient
) -> None:
    """A reconnect with ``Last-Event-ID`` (header or query) replays in order, then goes live."""
    channel = fresh("resume")
    url = f"{site.base}/publish/{channel}"
    async with subscribe(http, f"{site.base}/subscribe/{channel}") as sub:
        sent = [(await publish(http, url, sub.token, chat(str(n)))).json()["id"] for n in range(4)]
        token = sub.token
    for headers, query in (({"last-event-id": sent[0]}, ""), ({}, f"?last_event_id={sent[1]}")):
        resume = f"{site.base}/subscribe/{channel}{query}"
        async with subscribe(http, resume, headers=headers) as again:
            assert again.init["message"]["recovered"] is True
            after = sent.index(headers.get("last-event-id") or query.rpartition("=")[2])
            replayed = [(await again.stream.until("broadcast")).id for _ in sent[after + 1 :]]
            assert replayed == sent[after + 1 :]
            live = (await publish(http, url, token, chat("live"))).json()["id"]
            assert (await again.stream.until("broadcast")).id == live
            sent.append(live)


async def test_refusals_are_json_with_their_status(site: Site, http: httpx.AsyncClient) -> None:
    """Each refusal of the protocol reaches the client as ``{code, message}`` with its status."""
    channel = fresh("refusals")
    async with subscribe(http, f"{site.base}/subscribe/{channel}") as sub:
        token = sub.token
    url = f"{site.base}/publish/{channel}"
    body = json.dumps(chat("x"))
    json_type = {"content-type": "application/json"}
    cases: list[tuple[str, str, dict[str, str], str, dict[str, str], int]] = [
        ("GET", f"{site.base}/subscribe/bad%20name", {}, "", {}, 400),
        ("GET", f"{site.base}/nowhere/{channel}", {}, "", {}, 404),
        ("PUT", url, {"token": token}, body, json_type, 405),
        ("POST", url, {}, body, json_type, 401),
        ("POST", url, {"token": token[:-4] + "AAAA"}, body, json_type, 401),
        ("POST", url, {"token": token}, body, {"content-type": "text/plain"}, 415),
        ("POST", url, {"token": token}, "x" * 70_000, json_type, 413),
        ("POST", url, {"token": token}, "{not json", json_type, 400),
        ("POST", url, {"token": token}, '{"type": "nope"}', json_type, 400),
    ]
    for method, target, params, content, headers, status in cases:
        reply = await http.request(method, target, params=params, content=content, headers=headers)
        assert reply.status_code == status, (method, target, reply.text)
        assert reply.json()["code"] == status, reply.text
        if status == 405:
            assert reply.headers["allow"] == "POST, OPTIONS"


async def test_a_malformed_multipart_body_is_refused(site: Site, http: httpx.AsyncClient) -> None:
    """415 from the app everywhere, except on daphne, which parses it and answers 400 itself."""
    channel = fresh("multipart")
    async with subscribe(http, f"{site.base}/subscribe/{channel}") as sub:
        reply = await http.post(
            f"{site.base}/publish/{channel}",
            params={"token": sub.token},
            content=b"not a multipart body",
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        if site.server == "daphne":
            assert (reply.status_code, reply.content) == (400, b"")
        else:
            assert reply.status_code == 415, reply.text
            assert reply.json()["code"] == 415
        # The stream goes on: the next broadcast still reaches it.
        reply = await publish(http, f"{site.base}/publish/{channel}", sub.token, chat("after"))
        assert reply.status_code == 200, reply.text
        assert (await sub.stream.until("broadcast")).json["message"]["text"] == "after"


# -- WebSocket ---------------------------------------------------------------------------------


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        frame = await ws.recv()
    assert isinstance(frame, str)
    return dict(json.loads(frame))


async def test_websocket_publishes_and_receives_next_to_sse(
    site: Site, http: httpx.AsyncClient
) -> None:
    """init first, each frame acked once with its ref, events to WebSocket and SSE alike."""
    channel = fresh("ws")
    async with subscribe(http, f"{site.base}/subscribe/{channel}") as sse:
        url = f"{site.ws_base}/ws/{channel}"
        async with websockets.connect(url, open_timeout=WAIT) as ws:
            init = await recv_json(ws)
            assert (init["type"], init["message"]["viewer_count"]) == ("init", 2)
            await ws.send(json.dumps({**chat("over ws"), "ref": 7}))
            ack = await recv_json(ws)
            while ack["type"] != "ack":  # the broadcast may come first
                ack = await recv_json(ws)
            assert (ack["code"], ack["ref"]) == (200, 7)
            event = await sse.stream.until("broadcast")
            assert (event.id, event.json["message"]["text"]) == (ack["id"], "over ws")

            reply = await publish(http, f"{site.base}/publish/{channel}", sse.token, chat("sse"))
            while (frame := await recv_json(ws))["type"] != "broadcast" or frame["id"] != (
                reply.json()["id"]
            ):
                pass
            await ws.send(json.dumps({"type": "nope", "ref": "r"}))
            while (frame := await recv_json(ws))["type"] != "error":
                pass
            assert (frame["code"], frame["ref"]) == (400, "r")
            await ws.send(json.dumps({"type": "request"}))
            while (frame := await recv_json(ws))["type"] != "request":
                pass
            assert [item["id"] for item in frame["message"]] == [ack["id"], reply.json()["id"]]


async def test_an_idle_websocket_gets_keepalive_frames_and_stays_open(site: Site) -> None:
    """Issue 19: ``{"type":"ping"}`` every ``heartbeat`` (1 s here), on servers that never ping."""
    async with websockets.connect(f"{site.ws_base}/ws/{fresh('idle')}", open_timeout=WAIT) as ws:
        assert (await recv_json(ws))["type"] == "init"
        for _ in range(2):
            assert await recv_json(ws) == {"type": "ping"}
        await ws.send(json.dumps({**chat("still open"), "ref": 1}))
        while (frame := await recv_json(ws))["type"] != "ack":
            pass
        assert frame["code"] == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [("/ws/bad%20name", 400), ("/ws", 400), ("/elsewhere", 404)],
    ids=["bad-name", "no-channel", "unknown-path"],
)
async def test_websocket_refusals_before_the_upgrade(site: Site, path: str, status: int) -> None:
    """An HTTP JSON reply where the server has ``websocket.http.response``; else daphne's 403."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(site.ws_base + path, open_timeout=WAIT):
            pass  # pragma: no cover - the handshake is refused
    response = refused.value.response
    if site.server in NO_WS_HTTP_RESPONSE:
        assert response.status_code == 403  # a close before accept, turned into 403 by daphne
    else:
        assert response.status_code == status
        assert json.loads(response.body)["code"] == status


# -- slow readers ------------------------------------------------------------------------------


def stalled_subscribe(base: str, path: str) -> socket.socket:
    """Open a subscribe request on a socket with a tiny window that will never be read."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def viewers(http: httpx.AsyncClient, site: Site, channel: str) -> int:
    """The channel's viewer count, less the subscribe that asks for it."""
    return await viewers_at(http, site.base, channel)


async def test_a_reader_that_stalls_is_disconnected(site: Site, http: httpx.AsyncClient) -> None:
    """8 MiB of broadcasts (16 on gunicorn): the stalled reader is let go, the live one gets all.

    Where ``send`` waits (all but daphne) its mailbox overflows; on daphne its stream ends after
    ``max_buffer_bytes`` of live events (256 KiB here). Either way it is let go, so it never holds
    more than that. The live reader is a WebSocket, which daphne does not renew (the next
    test covers an SSE reader there).
    """
    channel = fresh("flood")
    pad = "x" * 32768
    count = 512 if site.server in ON_REDIS else 256  # 16 MiB (8 MiB) in all
    async with Client(site.base, transport="ws") as client, client.subscribe(channel) as reader:
        events = aiter(reader)

        async def next_number() -> int:
            with anyio.fail_after(WAIT):
                while True:
                    event = await anext(events)
                    if event.type == "broadcast":
                        return int(event.message["n"])

        url, token = f"{site.base}/publish/{channel}", reader.token
        assert token is not None
        for n in range(10):  # fill the history, warm the buffers, before the baseline
            assert (await publish(http, url, token, chat(pad, n=n))).status_code == 200
            assert await next_number() == n
        stalled = stalled_subscribe(site.root, f"/channel/subscribe/{channel}")
        try:
            await eventually(lambda: viewers(http, site, channel), lambda n: n >= 2, interval=0.05)
            for n in range(count):  # in step with the live reader: it is never behind
                reply = await publish(http, url, token, chat(pad, n=n))
                assert reply.status_code == 200, reply.text
                assert await next_number() == n
            # The stalled reader is let go, which is what bounds the memory it can hold: on
            # daphne, whose send never waits, by the stream budget (a server that buffered all
            # of it for ever would keep it counted).
            await eventually(lambda: viewers(http, site, channel), lambda n: n == 1, interval=0.05)
        finally:
            stalled.close()


async def test_an_sse_reader_that_keeps_up_gets_every_event(site: Site) -> None:
    """1 MiB of broadcasts, four times ``max_buffer_bytes``, all delivered in order.

    On daphne the stream ends after each 256 KiB of live events, and the client resumes from
    history with ``Last-Event-ID`` (so ``recovered`` is True); elsewhere it is never renewed.
    """
    channel = fresh("budget")
    pad = "x" * 32768
    async with Client(site.base) as client, client.subscribe(channel) as reader:
        events = aiter(reader)
        for n in range(32):  # in step: the reader is never behind by more than the history
            await reader.publish({"n": n, "pad": pad})
            with anyio.fail_after(WAIT):
                event = await anext(events)
                while event.type != "broadcast":
                    event = await anext(events)
            assert event.message["n"] == n
        assert reader.recovered is (True if site.server in UNPACED else None)


def stalled_websocket(base: str, path: str) -> socket.socket:
    """Open a WebSocket handshake on a socket with a tiny window that will never be read."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


async def test_on_daphne_a_websocket_that_stalls_is_closed_by_its_keepalive(
    http: httpx.AsyncClient,
) -> None:
    """Daphne's pings go unanswered by a client that does not read: daphne closes it.

    What docs/servers.md promises of WebSockets on daphne, with a 1 s ping interval and a 2 s
    timeout instead of the 20 s and 30 s defaults.
    """
    args = [*SERVERS["daphne"][:2], "--ping-interval", "1", "--ping-timeout", "2"]
    args += SERVERS["daphne"][2:]
    process = start("daphne", "tests.server_apps:channels", max_buffer_bytes=1 << 26, args=args)
    site = Site("daphne", process)
    try:
        channel = fresh("ws-stall")
        stalled = stalled_websocket(site.root, f"/ws/{channel}")
        try:
            async with subscribe(http, f"{site.root}/subscribe/{channel}") as reader:
                if reader.init["message"]["viewer_count"] < 2:  # pragma: no cover
                    await reader.stream.until("system")  # the stalled socket's join
                url, pad = f"{site.root}/publish/{channel}", "x" * 32768
                with anyio.fail_after(WAIT):
                    n = 0
                    while True:
                        reply = await publish(http, url, reader.token, chat(pad, n=n))
                        assert reply.status_code == 200, reply.text
                        event = await reader.stream.until("broadcast")
                        assert event.json["message"]["n"] == n
                        n += 1
                        if n % 20 == 0 and await viewers_at(http, site.root, channel) == 1:
                            break
        finally:
            stalled.close()
    finally:
        stop_server_process(process)


async def viewers_at(http: httpx.AsyncClient, base: str, channel: str) -> int:
    """The channel's viewer count at ``base``, less the subscribe that asks for it."""
    async with subscribe(http, f"{base}/subscribe/{channel}") as probe:
        return int(probe.init["message"]["viewer_count"]) - 1


# -- the Python client -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_python_client_subscribes_publishes_and_requests(
    site: Site, transport: Any
) -> None:
    """``channel_asgi.client.Client`` works against the server over either transport."""
    channel = fresh(f"client-{transport}")
    async with Client(site.base, transport=transport) as client:
        async with client.subscribe(channel) as sub:
            assert sub.user_id
            first = await sub.publish({"text": "one"})
            await sub.publish({"text": "to me"}, type="private", to_user_id=sub.user_id)
            with anyio.fail_after(WAIT):
                event = await anext(aiter(sub))
                while event.type != "broadcast":
                    event = await anext(aiter(sub))
                assert (event.id, event.message) == (first, {"text": "one"})
                while event.type != "private":
                    event = await anext(aiter(sub))
            assert [item.id for item in await sub.request()] == [first]


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_one_stream_of_several_channels_delivers_each_and_changes_live(
    site: Site, transport: Any
) -> None:
    """``client.subscribe(a, b)``: one connection, each channel's events, an add and a remove."""
    a, b, c = (fresh(f"many-{transport}-{name}") for name in "abc")
    async with Client(site.base, transport=transport) as client:
        async with client.subscribe(a, b) as sub:
            assert isinstance(sub, Streams)
            sent = {
                a: await sub.publish("on a", channel=a),
                b: await sub.publish("on b", channel=b),
            }
            seen: dict[str, str | None] = {}
            with anyio.fail_after(WAIT):
                async for event in sub:
                    if event.type == "broadcast":
                        seen[event.stream_id] = event.id
                    if len(seen) == 2:
                        break
            assert seen == sent
            assert [item.id for item in await sub.request(channel=b)] == [sent[b]]
            await sub.add(c)
            await eventually(lambda: c in sub.tokens)  # its init has come
            on_c = await sub.publish("on c", channel=c)
            await sub.remove(a)
            with anyio.fail_after(WAIT):
                wanted = {("broadcast", c, on_c), ("end", a, None)}
                got: set[tuple[str, str, str | None]] = set()
                async for event in sub:
                    got.add((event.type, event.stream_id, event.id))
                    if wanted <= got:
                        break
            assert sub.channels == [b, c]


# -- what the app knows of its server ---------------------------------------------------------


async def test_only_daphne_is_named_in_the_log_and_only_once(
    site: Site, http: httpx.AsyncClient
) -> None:
    """The warning about a ``send`` that never waits comes once per process, on daphne only."""
    for _ in range(2):
        async with subscribe(http, f"{site.base}/subscribe/{fresh('log')}"):
            pass
    assert (await http.get(f"{site.root}/")).status_code == 200
    warnings = site.process.output().count("whose send never waits")
    assert warnings == (1 if site.server in UNPACED else 0), site.process.output()


def owned_by(module: str, name: str = "send") -> Any:
    """A bound method of an object of a class defined in ``module`` (as servers pass)."""
    owner = type("Protocol", (), {"__module__": module, name: lambda self: None})()
    return getattr(owner, name)


@pytest.mark.parametrize(
    ("receive", "send", "name"),
    [
        (owned_by("uvicorn.protocols.http.httptools_impl", "receive"), None, "uvicorn"),
        (None, owned_by("hypercorn.protocol.http_stream"), "hypercorn"),
        (owned_by("granian._granian", "receive"), None, "granian"),
        (None, functools.partial(owned_by("daphne.server"), "request"), "daphne"),
        (owned_by("asyncio.queues", "get"), lambda message: None, ""),
    ],
    ids=["uvicorn", "hypercorn", "granian", "daphne", "unknown"],
)
def test_the_server_is_recognised_by_what_it_passes(receive: Any, send: Any, name: str) -> None:
    """``receive`` or ``send`` (a host wraps ``send`` only) names the server's package."""
    assert identify(receive, send) == name


# -- stopping and restarting -------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """One way of stopping a server: which server, serving which app, sent which signal, where.

    ``to`` is ``"pid"`` for the server's own process (``kill``, systemd, Docker, Kubernetes) or
    ``"group"`` for its whole process group, as Ctrl-C in a terminal does.
    """

    server: str
    app: str
    signum: signal.Signals
    to: str = "pid"
    #: Whether the process exits once its streams have ended (see docs/servers.md#stopping).
    exits: bool = True

    @property
    def id(self) -> str:
        return f"{self.server}-{self.app}-{self.signum.name}-{self.to}"


#: The command of ``quart run`` (hypercorn, in Quart's own event loop).
QUART_RUN: Final = [
    "-m", "quart", "--app", "tests.server_apps:quart", "run", "--host", "127.0.0.1",
    "--port", "{port}",
]  # fmt: skip

STOPS: Final = [
    Stop("uvicorn", "fastapi", signal.SIGTERM),
    Stop("uvicorn", "fastapi", signal.SIGINT, "group"),
    Stop("hypercorn", "fastapi", signal.SIGTERM),
    Stop("hypercorn", "channels", signal.SIGTERM),
    Stop("hypercorn", "fastapi", signal.SIGINT, "group"),
    Stop("quart", "quart", signal.SIGTERM),
    Stop("quart", "quart", signal.SIGINT, "group"),
    Stop("granian", "fastapi", signal.SIGTERM),
    Stop("granian", "channels", signal.SIGTERM),
    Stop("granian", "fastapi", signal.SIGINT, "group"),
    Stop("daphne", "fastapi", signal.SIGTERM),
    Stop("daphne", "fastapi", signal.SIGINT, "group"),
    Stop("gunicorn", "fastapi", signal.SIGTERM),
    Stop("gunicorn", "fastapi", signal.SIGINT, "group"),
    # SIGINT to the master alone: gunicorn sends SIGQUIT to the workers, which uvicorn's worker
    # class only notes (worker.alive); the app ends its streams, uvicorn waits for gunicorn's
    # --graceful-timeout (30 s) before it exits.
    Stop("gunicorn", "fastapi", signal.SIGINT, exits=False),
]


@pytest.mark.parametrize("stop", STOPS, ids=[stop.id for stop in STOPS])
async def test_a_stop_ends_every_stream_cleanly_and_releases_presence(
    stop: Stop, redis_for_workers: tuple[str, str]
) -> None:
    """Issue 19: on every server, SIGTERM or Ctrl-C ends SSE and WebSocket cleanly, at once.

    The SSE response completes (the client reads its end, not a network error), the WebSocket
    closes with 1001 or 1012, the viewers are gone from Redis while the worker's presence lease
    (30 s) still runs, the server logs no traceback, and it exits. On Redis, so that the test
    reads the presence the server's processes leave.
    """
    url, prefix = redis_for_workers
    args = QUART_RUN if stop.server == "quart" else None
    process = start(
        stop.server, f"tests.server_apps:{stop.app}", redis_url=url, prefix=prefix, args=args
    )
    base = process.base + ("" if stop.app == "channels" else "/channel")
    channel = fresh("stop")
    presence = RedisStorage(url, prefix=prefix)  # read only: the server's processes write it
    try:
        async with (
            httpx.AsyncClient(trust_env=False, timeout=WAIT) as http,
            subscribe(http, f"{base}/subscribe/{channel}") as sse,
            websockets.connect(f"ws{base[4:]}/ws/{channel}", open_timeout=WAIT) as ws,
        ):
            assert (await recv_json(ws))["type"] == "init"
            await eventually(lambda: presence.viewer_count(channel), lambda n: n == 2)
            if stop.to == "group":
                os.killpg(process.pid, stop.signum)
            else:
                os.kill(process.pid, stop.signum)
            assert await ended_cleanly(sse.stream), f"{stop.id} cut the SSE stream"
            # daphne's WebSockets (autobahn) close with 1000 or 3000-4999 only
            assert await close_code(ws) in ((1000,) if stop.server == "daphne" else (1001, 1012))
            await eventually(lambda: presence.viewer_count(channel), lambda n: n == 0)
        if stop.exits:  # a bounded wait: hanging is the failure
            await eventually(lambda: process.process.poll(), lambda code: code is not None)
        assert "Traceback" not in process.output(), process.output()
    finally:
        stop_server_process(process)
        await presence.aclose()


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the WebSocket; return its close code (1006: cut)."""
    with anyio.fail_after(WAIT):
        try:
            while True:
                await ws.recv()
        except websockets.exceptions.ConnectionClosed:
            pass
    return ws.close_code


async def ended_cleanly(stream: EventStream) -> bool:
    """Read until the response ends; True if it completed (not cut by a network error)."""
    try:
        while True:
            await stream.next()
    except EOFError:
        return True
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return False


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_the_client_resumes_across_a_server_restart(
    server: str, redis_for_workers: tuple[str, str]
) -> None:
    """Issue 14: stop the server under a subscribed client and start it again on the same
    port (Redis keeps the history): the client reconnects and misses nothing."""
    url, prefix = redis_for_workers
    port = free_port()
    app = "tests.server_apps:fastapi"
    channel = fresh("restart")
    process = start(server, app, redis_url=url, prefix=prefix, port=port)
    try:
        base = f"{process.base}/channel"
        async with Client(base) as client, client.subscribe(channel) as sub:
            before = [await sub.publish({"n": n}) for n in range(3)]
            token = sub.token
            assert token is not None
            os.kill(process.pid, signal.SIGTERM)
            await eventually(lambda: process.process.poll(), lambda code: code is not None)
            stop_server_process(process)
            process = start(server, app, redis_url=url, prefix=prefix, port=port)
            async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
                # A token from the first process: the secret is shared, so it still verifies.
                after = [
                    (await publish(http, f"{base}/publish/{channel}", token, chat(str(n))))
                    .json()
                    .get("id")
                    for n in range(3)
                ]
            seen: list[str | None] = []
            with anyio.fail_after(WAIT):
                async for event in sub:
                    if event.type == "broadcast":
                        seen.append(event.id)
                        if len(seen) == 6:
                            break
            assert seen == before + after, (seen, before, after)
            assert sub.recovered is True
    finally:
        stop_server_process(process)

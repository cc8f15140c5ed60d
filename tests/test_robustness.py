"""Slow consumers, disconnect storms, shutdown with open streams, and garbage bodies."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
from typing import Any

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.history import REQUEST_PAGE_BYTES
from channel_asgi.mailbox import Mailbox
from channel_asgi.storage.base import History
from channel_asgi.storage.memory import MemoryStorage

from .helpers import WAIT, eventually, publish, subscribe

UVICORN_FACTORY = ["-m", "uvicorn", "channel_asgi.cli:create_app", "--factory", "--port", "{port}"]


def options(**values: object) -> dict[str, str]:
    return {"CHANNEL_ASGI_CLI_OPTIONS": json.dumps(values)}


def raw_subscribe(base: str, channel: str) -> socket.socket:
    """Open a subscribe request on a raw socket that will never be read."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((host, int(port)))
    sock.sendall(f"GET /subscribe/{channel} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


@pytest.mark.slow
async def test_a_subscriber_that_never_reads_is_cut_off_and_nobody_else_slows_down(
    server_process, client: httpx.AsyncClient
) -> None:
    """Thousands of 2 KiB broadcasts: the reader gets all of them, the stuck socket is cut."""
    server = server_process(UVICORN_FACTORY, options(max_buffer_bytes=262144, history_size=10))
    base = server.base
    stuck = raw_subscribe(base, "flood")
    try:
        async with subscribe(client, f"{base}/subscribe/flood") as reader:
            if reader.init["message"]["viewer_count"] == 1:
                await reader.stream.until("system")  # the stuck socket joined after us
            url = f"{base}/publish/flood"
            pad = "x" * 2048
            for _ in range(50):  # warm up allocator and buffers before the baseline
                await publish(client, url, reader.token, {"type": "broadcast", "message": pad})
                await reader.stream.until("broadcast")
            count = 4000
            received = 0
            left: list[int] = []

            async def read_all() -> None:
                nonlocal received
                while received < count:
                    event = await reader.stream.next()
                    if event.type == "broadcast":
                        assert event.json["message"]["n"] == received
                        received += 1
                    elif event.json["message"]["status"] == "leave":
                        left.append(event.json["message"]["viewer_count"])

            async with anyio.create_task_group() as group:
                group.start_soon(read_all)
                for n in range(count):
                    body = {"type": "broadcast", "message": {"n": n, "pad": pad}}
                    reply = await publish(client, url, reader.token, body)
                    assert reply.status_code == 200
            assert received == count
            assert left == [1], "the stuck socket was not disconnected"
    finally:
        stuck.close()
    assert "it is not reading and its buffer is full" in server.output()


async def test_connect_disconnect_cycles_leave_no_trace(serve, client: httpx.AsyncClient) -> None:
    """200 subscribe/leave cycles return viewer_count, tasks and hub objects to baseline."""
    channels = ChannelApp()
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/cycle"):
        pass  # start the app and let its background tasks settle

    async def settle() -> None:
        await eventually(lambda: channels.viewer_count("cycle"), lambda n: n == 0)

    await settle()
    gc.collect()
    tasks = len(asyncio.all_tasks())
    for n in range(200):
        if n % 2:
            async with subscribe(client, f"{base}/subscribe/cycle") as sub:
                assert sub.init["message"]["viewer_count"] == 1
        else:  # an abrupt close of the socket, as when a browser tab is killed
            host, port = base.removeprefix("http://").split(":")
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(f"GET /subscribe/cycle HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                with anyio.fail_after(WAIT):
                    while b'"type":"init"' not in await stream.receive():
                        pass
        await settle()
    gc.collect()
    assert await channels.viewer_count("cycle") == 0
    # type(), not isinstance(): lazy proxies (Django settings) resolve on __class__
    assert not any(type(obj) is Mailbox for obj in gc.get_objects())
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks)


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "channel_asgi", "serve", "--port", "{port}"],
        UVICORN_FACTORY,
    ],
    ids=["cli", "plain-uvicorn"],
)
def test_stopping_the_server_ends_open_streams_and_exits(
    server_process, command: list[str]
) -> None:
    """SIGTERM with streams open: the streams end and the process exits cleanly."""
    server = server_process(command)
    with httpx.Client(trust_env=False, timeout=WAIT) as http:
        streams = [http.stream("GET", f"{server.base}/subscribe/s{n}") for n in range(3)]
        responses = [stream.__enter__() for stream in streams]
        for response in responses:
            assert next(response.iter_lines()).startswith("retry:")
        os.kill(server.pid, signal.SIGTERM)
        server.process.wait(timeout=WAIT)  # bounded: a server that hangs on its streams fails
        for stream in streams:
            stream.__exit__(None, None, None)
    # uvicorn re-raises the signal it handled once it has shut down cleanly
    assert server.process.returncode in (0, -signal.SIGTERM), server.output()
    assert "Finished server process" in server.output()
    assert "Exception" not in server.output()


class _RecordingStorage(MemoryStorage):
    """MemoryStorage that records the bytes each history read returned."""

    def __init__(self) -> None:
        super().__init__()
        self.read_sizes: list[int] = []

    async def history(self, channel: str, **options: Any) -> History:
        history = await super().history(channel, **options)
        self.read_sizes.append(sum(len(event.payload) for event in history.events))
        return history


async def _stalled_requester(
    base: str, channel: str, last_event_id: str | None = None
) -> tuple[socket.socket, str]:
    """A subscriber that reads its ``init`` (for the token) and then never reads again."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received = b""
    with anyio.fail_after(WAIT):
        await loop.sock_connect(sock, (host, int(port)))
        resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
        request = f"GET /subscribe/{channel} HTTP/1.1\r\nHost: {host}\r\n{resume}\r\n"
        await loop.sock_sendall(sock, request.encode())
        while b'"type":"init"' not in received or b"\n\n" not in received.split(b'"init"')[1]:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, received
            received += chunk
    init = next(line for line in received.split(b"\n") if b'"type":"init"' in line)
    return sock, json.loads(init.removeprefix(b"data: "))["message"]["token"]


async def test_request_replies_to_readers_that_stall_are_read_a_page_at_a_time(
    serve, client: httpx.AsyncClient
) -> None:
    """18 MB of history, requested again and again by sockets that never read.

    Each reply is read from the storage a page at a time, as the client takes it, so a stalled
    requester holds a page, never the whole history (which was read in one piece, and copied
    twice, per request before); a reader that keeps up still gets all of it.
    """
    storage = _RecordingStorage()
    channels = ChannelApp(
        secret="r" * 40, storage=storage, history_size=300, max_body_bytes=1 << 17
    )
    base = await serve(channels)
    url = f"{base}/publish/archive"
    async with subscribe(client, f"{base}/subscribe/archive") as reader:
        pad = "y" * 60_000
        for n in range(300):
            body = {"type": "broadcast", "message": {"n": n, "pad": pad}}
            assert (await publish(client, url, reader.token, body)).status_code == 200
            await reader.stream.until("broadcast")  # the reader keeps up
        stalled = [await _stalled_requester(base, "archive") for _ in range(6)]
        try:
            storage.read_sizes.clear()
            for _sock, token in stalled:
                for _ in range(5):
                    reply = await publish(client, url, token, {"type": "request"})
                    assert reply.status_code == 200, reply.text
            # The reader asks last and reads its whole reply: by then every stalled writer has
            # run as far as its client lets it.
            reply = await publish(client, url, reader.token, {"type": "request"})
            assert reply.status_code == 200
            items = 0
            while True:
                event = await reader.stream.next(comments=True)
                if event.comment == "request-end":
                    break
                if event.data and event.type == "request":
                    items += len(event.json["message"])
            assert items == 300
            history_bytes = 300 * len(pad)
            assert storage.read_sizes, "no history was read"
            # A page: a reply's first 16 events (their size not known yet), then about 256 KiB.
            assert max(storage.read_sizes) <= 16 * len(pad) * 1.01, storage.read_sizes
            assert sorted(storage.read_sizes)[len(storage.read_sizes) // 2] <= REQUEST_PAGE_BYTES
            # The reader's reply read it all once; six stalled ones read far less each.
            assert sum(storage.read_sizes) < history_bytes * 4, sum(storage.read_sizes)
        finally:
            for sock, _token in stalled:
                sock.close()


async def test_replays_to_resumers_that_stall_are_read_a_page_at_a_time(
    serve, client: httpx.AsyncClient
) -> None:
    """18 MB of history replayed (an unknown Last-Event-ID) to sockets that never read: each
    replay is read a page at a time as it is written; a resumer that reads gets all of it."""
    storage = _RecordingStorage()
    channels = ChannelApp(
        secret="r" * 40, storage=storage, history_size=300, max_body_bytes=1 << 17
    )
    base = await serve(channels)
    pad = "z" * 60_000
    ids = [await channels.publish("archive", {"n": n, "pad": pad}) for n in range(300)]
    storage.read_sizes.clear()
    stalled = [await _stalled_requester(base, "archive", "0-1") for _ in range(4)]
    try:
        headers = {"Last-Event-ID": "0-1"}
        async with subscribe(client, f"{base}/subscribe/archive", headers) as reader:
            assert reader.init["message"]["recovered"] is False
            replayed = [(await reader.stream.until("broadcast")).id for _ in ids]
            assert replayed == ids
        assert max(storage.read_sizes) <= 16 * len(pad) * 1.01, storage.read_sizes
    finally:
        for sock, _token in stalled:
            sock.close()

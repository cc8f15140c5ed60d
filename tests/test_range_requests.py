"""A ``request`` publish with a range of the archive by media time (SPEC 6.2, issue 16).

The reply is a ``request`` event (split into arrays of at most 256 KiB, closed by the SSE
marker or followed by the WebSocket ack) holding the archived broadcasts with
``from <= timestamp < to`` by (timestamp, id); a ``request`` without a range keeps its seed
meaning. On Redis the range reaches the worker that holds the requesting connection.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
import websockets

from channel_asgi import ChannelApp, Envelope
from channel_asgi.archive import ArchiveReader
from channel_asgi.client import ChannelError, Client, Transport
from channel_asgi.connection import Framing
from channel_asgi.history import REQUEST_CHUNK_BYTES, REQUEST_PAGE_BYTES
from channel_asgi.mailbox import MAX_REQUESTS, SEND_HISTORY, Close, HistoryRequest, Mailbox
from channel_asgi.ranges import MediaRange, decode_range, encode_range
from channel_asgi.storage import MemoryStorage
from channel_asgi.storage.base import ArchivePage

from .conftest import stop_server_process
from .helpers import WAIT, EventStream, publish, subscribe

SECRET = "range-request-secret-0123456789abcdef"


def chat(text: str, stamp: float) -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text}, "timestamp": stamp}


def ranged(**message: Any) -> dict[str, Any]:
    return {"type": "request", "message": message}


async def reply_of(stream: EventStream) -> list[dict[str, Any]]:
    """Read one ``request`` reply from an SSE stream: its events' items, up to the end marker."""
    items: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        while True:
            event = await stream.next(comments=True)
            if event.comment == "request-end":
                return items
            if event.comment is None and event.type == "request":
                items += event.json["message"]


async def test_a_range_request_answers_the_archived_broadcasts_in_media_order(
    serve, client: httpx.AsyncClient
) -> None:
    """``from <= timestamp < to``, at most ``limit``, by (timestamp, id); ``after`` goes on."""
    channels = ChannelApp(secret=SECRET, archive_size=100)
    base = await serve(channels)
    url = f"{base}/publish/vod/r"
    async with subscribe(client, f"{base}/subscribe/vod/r") as sub:
        sent = {}
        for text, stamp in [("e", 150.0), ("a", 119.0), ("b", 120.0), ("c", 130.0), ("d", 130.0)]:
            sent[text] = (await publish(client, url, sub.token, chat(text, stamp))).json()["id"]
        sent["z"] = (await publish(client, url, sub.token, chat("z", 180.0))).json()["id"]
        for _ in sent:
            await sub.stream.until("broadcast")

        reply = await publish(client, url, sub.token, ranged(**{"from": 120.0, "to": 180.0}))
        assert reply.status_code == 200, reply.text
        items = await reply_of(sub.stream)
        assert [item["message"]["text"] for item in items] == ["b", "c", "d", "e"]
        assert [item["id"] for item in items] == [sent[t] for t in "bcde"]
        assert all(item["type"] == "broadcast" for item in items)

        first = ranged(**{"from": 120, "to": 180, "limit": 2})
        await publish(client, url, sub.token, first)
        page = await reply_of(sub.stream)
        assert [item["message"]["text"] for item in page] == ["b", "c"]
        more = ranged(**{"from": 120, "to": 180, "limit": 2, "after": page[-1]["id"]})
        await publish(client, url, sub.token, more)
        assert [item["message"]["text"] for item in await reply_of(sub.stream)] == ["d", "e"]

        await publish(client, url, sub.token, ranged(to=125))
        assert [item["message"]["text"] for item in await reply_of(sub.stream)] == ["a", "b"]
        await publish(client, url, sub.token, ranged(**{"from": 500}))
        assert await reply_of(sub.stream) == []  # nothing there: one empty array


@pytest.mark.parametrize(
    "message",
    [None, "give me everything", {}, {"from_": 1}, {"note": "from"}, [1, 2], 7],
)
async def test_a_request_without_a_range_keeps_its_seed_meaning(
    serve, client: httpx.AsyncClient, message: Any
) -> None:
    """No message, or one that names no range field: the live history, oldest first."""
    channels = ChannelApp(secret=SECRET, archive_size=100, history_size=2)
    base = await serve(channels)
    ids = [await channels.publish("vod/s", str(n), timestamp=10.0 - n) for n in range(3)]
    async with subscribe(client, f"{base}/subscribe/vod/s") as sub:
        body: dict[str, Any] = {"type": "request"}
        if message is not None:
            body["message"] = message
        reply = await publish(client, f"{base}/publish/vod/s", sub.token, body)
        assert reply.status_code == 200, reply.text
        assert [item["id"] for item in await reply_of(sub.stream)] == ids[1:]


async def test_on_publish_hooks_see_the_range_a_request_asks_for(
    serve, client: httpx.AsyncClient
) -> None:
    """A request's hooks see its message: the range, or None for the live history."""
    channels = ChannelApp(secret=SECRET, archive_size=100)
    seen: list[tuple[str, Any]] = []

    @channels.on_publish
    async def record(envelope: Envelope, connection: Any) -> None:
        seen.append((envelope.type, envelope.message))
        envelope.message = {"from": 0, "to": 1}  # a request's message is not the hook's to change

    base = await serve(channels)
    event_id = await channels.publish("vod/h", "x", timestamp=20.0)
    async with subscribe(client, f"{base}/subscribe/vod/h") as sub:
        for body in (ranged(**{"from": 10, "to": 30, "limit": 5}), {"type": "request"}):
            reply = await publish(client, f"{base}/publish/vod/h", sub.token, body)
            assert reply.status_code == 200, reply.text
            assert [item["id"] for item in await reply_of(sub.stream)] == [event_id]
    assert seen == [("request", {"from": 10, "to": 30, "limit": 5}), ("request", None)]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"from": -1}, "$.message.from"),
        ({"from": "120"}, "$.message.from"),
        ({"from": True}, "$.message.from"),
        ({"to": -0.5}, "$.message.to"),
        ({"to": [1]}, "$.message.to"),
        ({"from": 50, "to": 10}, "$.message.from"),
        ({"limit": 0}, "$.message.limit"),
        ({"limit": 1001}, "$.message.limit"),
        ({"limit": 2.5}, "$.message.limit"),
        ({"limit": "10"}, "$.message.limit"),
        ({"after": 5}, "$.message.after"),
        ({"from": 0, "after": "1-0"}, "$.message.after"),
        ({"after": "not an id"}, "$.message.after"),
    ],
)
async def test_a_bad_range_is_400_naming_the_field_and_sends_nothing(
    serve, client: httpx.AsyncClient, message: dict[str, Any], field: str
) -> None:
    """Wrong types, bounds out of range, ``from > to`` and unknown ``after``: 400."""
    channels = ChannelApp(secret=SECRET, archive_size=100)
    base = await serve(channels)
    await channels.publish("vod/b", "x", timestamp=1.0)
    async with subscribe(client, f"{base}/subscribe/vod/b") as sub:
        reply = await publish(client, f"{base}/publish/vod/b", sub.token, ranged(**message))
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == 400
        assert f"`{field}`" in reply.json()["message"]
        later = await channels.publish("vod/b", "after the refusal")
        assert (await sub.stream.next()).id == later  # no request reply came before it


async def test_a_bad_range_is_a_body_error_before_the_widget_key_and_authorisation(
    serve, client: httpx.AsyncClient
) -> None:
    """The range is part of the body's check (400), which comes before 403s."""
    channels = ChannelApp(secret=SECRET, archive_size=10, widget_keys={"good"})
    channels.channel("liveonly/{id}", types=["broadcast"])
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/liveonly/1") as sub:
        url = f"{base}/publish/liveonly/1"
        bad = {**ranged(limit=0), "widget_key": "wrong"}
        assert (await publish(client, url, sub.token, bad)).status_code == 400
        good = {**ranged(limit=5), "widget_key": "good"}
        assert (await publish(client, url, sub.token, good)).status_code == 403  # no request


async def test_a_range_request_over_websocket_arrives_before_its_ack(serve) -> None:
    """The connection's own range request: the reply frames, then the ack with its ref."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    base = await serve(channels)
    ids = [await channels.publish("vod/w", str(n), timestamp=float(n + 1)) for n in range(4)]
    url = "ws" + base[len("http") :] + "/ws/vod/w"
    async with websockets.connect(url, open_timeout=WAIT) as ws:
        with anyio.fail_after(WAIT):
            assert json.loads(await ws.recv())["type"] == "init"
            await ws.send(json.dumps({**ranged(**{"from": 2, "limit": 2}), "ref": "r1"}))
            reply = json.loads(await ws.recv())
            ack = json.loads(await ws.recv())
            assert reply["type"] == "request"
            assert [item["id"] for item in reply["message"]] == ids[1:3]
            assert (ack["type"], ack["code"], ack["ref"]) == ("ack", 200, "r1")
            await ws.send(json.dumps({**ranged(after="nope"), "ref": "r2"}))
            error = json.loads(await ws.recv())
            assert (error["type"], error["code"], error["ref"]) == ("error", 400, "r2")
            assert "`$.message.after`" in error["message"]


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_python_client_requests_a_range(serve, transport: Transport) -> None:
    """``sub.request(start=, end=, limit=, after=)`` returns a page of the archive."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    base = await serve(channels)
    ids = [await channels.publish("vod/py", str(n), timestamp=float(n + 1)) for n in range(5)]
    async with Client(base, transport=transport) as client, client.subscribe("vod/py") as sub:
        page = await sub.request(start=2, end=5, limit=2)
        assert [event.id for event in page] == ids[1:3]
        assert all(isinstance(event, Envelope) for event in page)
        rest = await sub.request(start=2, end=5, limit=2, after=page[-1].id)
        assert [event.id for event in rest] == ids[3:4]
        assert [event.id for event in await sub.request()] == ids  # no range: the history
        with pytest.raises(ChannelError) as refused:
            await sub.request(limit=0)
        assert refused.value.code == 400


async def test_a_large_range_reply_is_read_page_by_page_in_arrays_of_256_kib() -> None:
    """Up to 1000 broadcasts, read in pages of about 256 KiB, each array at most 256 KiB."""
    reads: list[int] = []

    class Counting(MemoryStorage):
        async def archive_range(self, channel: str, **options: Any) -> ArchivePage:
            page = await super().archive_range(channel, **options)
            reads.append(sum(len(event.payload) for event in page.events))
            return page

    storage = Counting()
    async with ChannelApp(secret=SECRET, storage=storage, archive_size=1000) as channels:
        ids = [
            await channels.publish("vod/l", {"pad": "z" * 20_000}, timestamp=float(n + 1))
            for n in range(60)
        ]
        reply = ArchiveReader(storage).request_reply("vod/l", "u1", MediaRange(limit=1000))
        first = await reply.__anext__()
        assert len(reads) <= 2  # lazily: nowhere near the 1.2 MB of the range yet
        events = [first, *[event async for event in reply]]
    got = [item["id"] for event in events for item in json.loads(event)["message"]]
    assert got == ids
    assert all(
        len(json.loads(event)["message"]) and len(event) <= REQUEST_CHUNK_BYTES + 1024
        for event in events
    )
    assert all(size <= 2 * REQUEST_PAGE_BYTES for size in reads), reads


def test_a_mailbox_queues_every_range_request_and_one_live_one() -> None:
    """Live requests are merged; range requests each wait; past MAX_REQUESTS: too slow."""
    box = Mailbox("c", "conn", "u", Framing.SSE, 4096)
    box.request_history()
    box.request_history()
    query = encode_range(MediaRange(1.0, 2.0, 5, None))
    assert box.request_history(query) and box.request_history(query)
    items = box.pending()
    assert items[0] is SEND_HISTORY and len(items) == 3
    assert [decode_range(item.query) for item in items[1:] if isinstance(item, HistoryRequest)] == [
        MediaRange(1.0, 2.0, 5, None)
    ] * 2
    assert box.controls == 3
    for _ in range(MAX_REQUESTS - 3):
        assert box.request_history(query)
    assert not box.request_history(query)
    assert box.closed is Close.SLOW


def worker(redis_url: str, prefix: str) -> list[str]:
    """One ``channel-asgi serve`` worker on the shared Redis, with an archive."""
    return [
        "-m", "channel_asgi", "serve", "--port", "{port}", "--redis", redis_url,
        "--redis-prefix", prefix, "--secret", SECRET, "--log-level", "warning",
        "--archive-size", "500",
    ]  # fmt: skip


async def test_every_worker_answers_ranges_and_the_archive_survives_a_restart(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Published on B, requested on B for A's connection: the reply comes on A; both serve
    ``GET /history`` alike, and after both workers restart the archive is still there."""
    a_server = server_process(worker(redis_url, redis_prefix))
    b_server = server_process(worker(redis_url, redis_prefix))
    a, b = a_server.base, b_server.base
    async with subscribe(client, f"{a}/subscribe/vod/x") as on_a:
        sent = []
        for n, stamp in enumerate([30.0, 10.0, 20.0, 20.0, 40.0]):
            reply = await publish(client, f"{b}/publish/vod/x", on_a.token, chat(str(n), stamp))
            sent.append((stamp, n, reply.json()["id"]))
        expected = [event_id for _, _, event_id in sorted(sent)]
        body = ranged(**{"from": 10, "to": 40, "limit": 3})
        assert (await publish(client, f"{b}/publish/vod/x", on_a.token, body)).status_code == 200
        assert [item["id"] for item in await reply_of(on_a.stream)] == expected[:3]

    pages = [
        (await client.get(f"{url}/history/vod/x", params={"limit": 2})).json() for url in (a, b)
    ]
    assert pages[0] == pages[1]
    assert [event["id"] for event in pages[0]["events"]] == expected[:2]
    assert pages[0]["next"] == expected[1]

    stop_server_process(a_server)
    stop_server_process(b_server)
    again = server_process(worker(redis_url, redis_prefix)).base
    rest = await client.get(f"{again}/history/vod/x", params={"after": expected[1]})
    assert [event["id"] for event in rest.json()["events"]] == expected[2:]


async def test_an_after_evicted_before_the_reply_is_read_gives_an_empty_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The check passed, then the archive lost ``after``: one empty ``request`` event."""
    storage = MemoryStorage()
    reply = ArchiveReader(storage).request_reply("vod/gone", "u1", MediaRange(after="1-0"))
    with caplog.at_level("INFO", logger="channel_asgi"):
        events = [json.loads(event) async for event in reply]
    assert [(event["type"], event["message"]) for event in events] == [("request", [])]
    assert "left the archive before it was read" in caplog.text

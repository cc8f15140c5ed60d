"""``ChannelApp(metrics=True)``: ``GET {prefix}/metrics`` counts what happened, on a real server."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator

import anyio
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from channel_asgi import ChannelApp, Reject
from channel_asgi.storage import StorageUnreachable

from .helpers import WAIT, DownStorage, FakeClock, eventually, free_port, publish, subscribe

SECRET = "m" * 40
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """The samples of a Prometheus text exposition: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def scrape(client: httpx.AsyncClient, base: str) -> Samples:
    reply = await client.get(f"{base}/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    return parse(reply.text)


def chat(text: str) -> dict[str, object]:
    return {"type": "broadcast", "message": {"text": text}}


async def test_metrics_are_off_by_default(client: httpx.AsyncClient, serve) -> None:
    """Without ``metrics=True``, ``/metrics`` is a 404 that says how to turn them on."""
    base = await serve(ChannelApp(secret=SECRET))
    reply = await client.get(f"{base}/metrics")
    assert reply.status_code == 404
    assert "metrics=True" in reply.json()["message"]


async def test_the_spec_series_exist_from_the_start(client: httpx.AsyncClient, serve) -> None:
    """Every series SPEC 6.4 names is exposed, with the labels it names, before any traffic."""
    base = await serve(ChannelApp(secret=SECRET, metrics=True))
    text = (await client.get(f"{base}/metrics")).text
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["channel_asgi_connections"] == "gauge"
    assert types["channel_asgi_channels"] == "gauge"
    assert types["channel_asgi_publishes"] == "counter"
    assert types["channel_asgi_deliveries"] == "counter"
    assert types["channel_asgi_slow_consumer_disconnects"] == "counter"
    assert types["channel_asgi_storage_errors"] == "counter"
    assert types["channel_asgi_publish_seconds"] == "histogram"
    samples = parse(text)
    assert value(samples, "channel_asgi_connections", transport="sse") == 0
    assert value(samples, "channel_asgi_connections", transport="websocket") == 0
    assert ("channel_asgi_storage_errors_total", frozenset({("error", "unreachable")})) in samples


async def test_metrics_count_publishes_deliveries_connections_and_resumes(
    client: httpx.AsyncClient, serve
) -> None:
    """Known traffic on SSE and WebSocket gives exactly the counts it should."""
    channels = ChannelApp(secret=SECRET, metrics=True, widget_keys={"wk"})
    base = await serve(channels)
    url = f"{base}/publish/m"
    async with subscribe(client, f"{base}/subscribe/m") as a:
        async with subscribe(client, f"{base}/subscribe/m") as b:
            assert (await a.stream.until("system")).json["message"]["status"] == "join"
            ws_url = base.replace("http://", "ws://") + "/ws/m"
            async with websockets.connect(ws_url, open_timeout=WAIT) as ws:
                assert json.loads(await ws.recv())["type"] == "init"
                for sub in (a, b):  # the joins: a got 2, b got 1
                    assert (await sub.stream.until("system")).json["message"]["status"] == "join"
                samples = await scrape(client, base)
                assert value(samples, "channel_asgi_connections", transport="sse") == 2
                assert value(samples, "channel_asgi_connections", transport="websocket") == 1
                assert value(samples, "channel_asgi_channels") == 1
                assert value(samples, "channel_asgi_deliveries_total") == 3

                for n in range(5):
                    reply = await publish(
                        client, url, a.token, {**chat(str(n)), "widget_key": "wk"}
                    )
                    assert reply.status_code == 200, reply.text
                await ws.send(json.dumps({**chat("ws"), "widget_key": "wk"}))
                acks = [json.loads(await ws.recv()) for _ in range(7)]  # 6 broadcasts, 1 ack
                assert [m["type"] for m in acks].count("ack") == 1
                for sub in (a, b):
                    for _ in range(6):
                        await sub.stream.until("broadcast")
                assert (await publish(client, url, a.token, chat("no key"))).status_code == 403
                assert (await publish(client, url, "forged", chat("x"))).status_code == 401
                await ws.send("[1]")
                assert json.loads(await ws.recv())["code"] == 400

                samples = await scrape(client, base)
    publishes = "channel_asgi_publishes_total"
    assert value(samples, publishes, type="broadcast", code="200") == 6
    assert value(samples, publishes, type="broadcast", code="403") == 1
    assert value(samples, publishes, type="unknown", code="401") == 1
    assert value(samples, publishes, type="unknown", code="400") == 1
    assert value(samples, publishes) == 9
    assert value(samples, "channel_asgi_deliveries_total") == 3 + 6 * 3
    assert value(samples, "channel_asgi_publish_seconds_count") == 6
    assert value(samples, "channel_asgi_subscribes_total", transport="sse", code="200") == 2
    assert value(samples, "channel_asgi_subscribes_total", transport="websocket", code="200") == 1

    async with subscribe(client, f"{base}/subscribe/m", {"Last-Event-ID": "0-0"}) as again:
        assert again.init["message"]["recovered"] is False
    newest = await channels.publish("m", "last")
    async with subscribe(client, f"{base}/subscribe/m", {"Last-Event-ID": newest}) as again:
        assert again.init["message"]["recovered"] is True
    assert (await client.get(f"{base}/subscribe/bad%20name")).status_code == 400
    samples = await eventually(
        lambda: scrape(client, base),
        lambda s: value(s, "channel_asgi_connections") == 0,
    )
    assert value(samples, "channel_asgi_channels") == 0
    assert value(samples, "channel_asgi_resumes_total", recovered="true") == 1
    assert value(samples, "channel_asgi_resumes_total", recovered="false") == 1
    assert value(samples, "channel_asgi_subscribes_total", transport="sse", code="400") == 1
    assert value(samples, publishes, type="broadcast", code="200") == 7  # the server's own


async def test_storage_errors_and_refused_publishes_are_counted(
    client: httpx.AsyncClient, serve
) -> None:
    """A storage outage counts in storage_errors and as 503 publishes, in every way to publish."""
    storage = DownStorage()
    channels = ChannelApp(storage=storage, secret=SECRET, metrics=True)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/s") as sub:
        storage.failure = StorageUnreachable("down for the test")
        assert (await publish(client, f"{base}/publish/s", sub.token, chat("x"))).status_code == 503
        with pytest.raises(StorageUnreachable):
            await channels.publish("s", "x")
        storage.failure = None
    samples = await scrape(client, base)
    assert value(samples, "channel_asgi_storage_errors_total", error="unreachable") == 2
    assert value(samples, "channel_asgi_publishes_total", type="broadcast", code="503") == 2
    assert value(samples, "channel_asgi_publish_seconds_count") == 2  # failures at the storage


async def test_rate_limits_hooks_and_webhooks_are_counted(
    client: httpx.AsyncClient, serve, clock: FakeClock
) -> None:
    """429s by limit, hook failures by hook, and webhook calls by outcome."""
    closed = f"http://127.0.0.1:{free_port()}"
    channels = ChannelApp(
        secret=SECRET, metrics=True, rate_limit=(1.0, 2), webhook_urls=[f"{closed}/"]
    )

    @channels.on_publish
    async def refuse_some(envelope, conn) -> None:
        if envelope.message == "boom":
            raise RuntimeError("a bug in the hook")
        if envelope.message == "reject":
            raise Reject(422, "not that")

    @channels.on_connect
    async def broken(conn) -> None:
        raise RuntimeError("a bug in the connect hook")

    base = await serve(channels)
    url = f"{base}/publish/h"
    async with subscribe(client, f"{base}/subscribe/h") as sub:
        webhook = {"type": "webhook", "message": {"url": f"{closed}/x"}}
        assert (await publish(client, url, sub.token, webhook)).status_code == 502
        boom = {"type": "broadcast", "message": "boom"}
        assert (await publish(client, url, sub.token, boom)).status_code == 500
        assert (await publish(client, url, sub.token, chat("over"))).status_code == 429
        clock.advance(1.0)
        reject = {"type": "broadcast", "message": "reject"}
        assert (await publish(client, url, sub.token, reject)).status_code == 422
    samples = await eventually(
        lambda: scrape(client, base),
        lambda s: value(s, "channel_asgi_hook_failures_total", hook="on_connect") == 1,
    )
    assert (
        value(samples, "channel_asgi_hook_failures_total", hook="on_publish", reason="error") == 1
    )
    assert value(samples, "channel_asgi_hook_failures_total", reason="timeout") == 0
    assert value(samples, "channel_asgi_rate_limited_total", limit="user") == 1
    assert value(samples, "channel_asgi_webhooks_total", outcome="unreachable") == 1
    publishes = "channel_asgi_publishes_total"
    assert value(samples, publishes, type="webhook", code="502") == 1
    assert value(samples, publishes, type="broadcast", code="500") == 1
    assert value(samples, publishes, type="unknown", code="429") == 1
    assert value(samples, publishes, type="broadcast", code="422") == 1


def _stuck_subscriber(base: str, channel: str) -> socket.socket:
    """A subscribe request on a raw socket that is never read (a small receive window)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /subscribe/{channel} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


@pytest.fixture
def stuck() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


async def test_a_slow_consumer_disconnect_is_counted(
    client: httpx.AsyncClient, serve, stuck: list[socket.socket]
) -> None:
    """A subscriber that never reads is cut off once its buffer is full, and counted once."""
    channels = ChannelApp(secret=SECRET, metrics=True, max_buffer_bytes=16384, history_size=1)
    base = await serve(channels)
    stuck.append(_stuck_subscriber(base, "slow"))
    await eventually(lambda: channels.viewer_count("slow"), lambda n: n == 1)
    pad = "x" * 4096
    with anyio.fail_after(WAIT):
        while await channels.viewer_count("slow"):  # each publish yields to the writers
            await channels.publish("slow", pad)
    samples = await eventually(
        lambda: scrape(client, base),
        lambda s: value(s, "channel_asgi_slow_consumer_disconnects_total") == 1,
    )
    assert value(samples, "channel_asgi_connections") == 0


async def test_two_apps_in_one_process_count_separately(client: httpx.AsyncClient, serve) -> None:
    """Each app has a registry of its own: no clash, no shared counts."""
    first, second = ChannelApp(metrics=True), ChannelApp(metrics=True)
    first_base, second_base = await serve(first), await serve(second)
    await first.publish("a", 1)
    await first.publish("a", 2)
    await second.publish("a", 3)
    one = await scrape(client, first_base)
    two = await scrape(client, second_base)
    assert value(one, "channel_asgi_publishes_total", type="broadcast") == 2
    assert value(two, "channel_asgi_publishes_total", type="broadcast") == 1


async def test_metrics_carry_cors_headers_like_the_other_routes(
    client: httpx.AsyncClient, serve
) -> None:
    """An allowed origin gets its CORS header; POST is 405 with Allow."""
    base = await serve(ChannelApp(metrics=True, cors_origins=["https://dash.example"]))
    reply = await client.get(f"{base}/metrics", headers={"Origin": "https://dash.example"})
    assert reply.headers["access-control-allow-origin"] == "https://dash.example"
    assert reply.headers["cache-control"] == "no-store"
    refused = await client.post(f"{base}/metrics")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, OPTIONS")


def test_metrics_without_prometheus_client_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``metrics=True`` without the extra fails at construction, naming the extra."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r'pip install "channel-asgi\[metrics\]"'):
        ChannelApp(metrics=True)
    ChannelApp()  # metrics off: prometheus_client is never imported

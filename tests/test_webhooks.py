"""The webhook publish type (allow-list, CloudEvents, timeouts) and per-pattern bridges."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import websockets

from channel_asgi import ChannelApp
from channel_asgi.webhooks import url_allowed

from .helpers import WAIT, asgi_body, eventually, free_port, publish, subscribe


@dataclass
class Listener:
    """An HTTP endpoint that records what it receives and answers as told."""

    status: int = 202
    hold: anyio.Event | None = None  # when given, nothing is answered until it is set
    redirect_to: str | None = None
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await asgi_body(receive)
        self.received.append(
            {
                "path": scope["path"],
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": json.loads(body) if body else None,
            }
        )
        self.changed.set()
        self.changed = anyio.Event()
        if self.hold is not None:
            await self.hold.wait()
        status, headers = self.status, []
        if self.fail_first:
            self.fail_first -= 1
            status = 500
        if self.redirect_to is not None:
            status, headers = 302, [(b"location", self.redirect_to.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(WAIT):
            while len(self.received) < count:
                await self.changed.wait()
        return self.received


def webhook(url: str, **message: object) -> dict[str, object]:
    return {"type": "webhook", "message": {"url": url, **message}, "timestamp": 12.5}


async def test_webhook_posts_a_cloudevent_and_replies_with_the_upstream_status(
    serve, client: httpx.AsyncClient
) -> None:
    """An allowed URL gets a CloudEvents 1.0 JSON event; the reply carries its status."""
    listener = Listener(status=202)
    hook_base = await serve(listener)
    base = await serve(ChannelApp(webhook_urls=[f"{hook_base}/hooks"], widget_keys={"wk"}))
    async with subscribe(client, f"{base}/subscribe/w") as sub:
        body = {**webhook(f"{hook_base}/hooks/order?x=1", item=3), "widget_key": "wk"}
        reply = await publish(client, f"{base}/publish/w", sub.token, body)
        assert reply.json() == {"code": 200, "message": "Webhook called", "status": 202}
    [request] = listener.received
    assert request["path"] == "/hooks/order"
    assert request["headers"]["content-type"] == "application/cloudevents+json"
    event = request["body"]
    assert event["specversion"] == "1.0"
    assert event["type"] == "channel_asgi.webhook"
    assert event["source"] == "w"
    assert event["id"]
    assert event["data"] == {
        "stream_id": "w",
        "author_id": sub.user_id,
        "to_user_id": "",
        "message": {"url": f"{hook_base}/hooks/order?x=1", "item": 3},
        "timestamp": 12.5,
        "type": "webhook",
    }
    assert "wk" not in json.dumps(event)


def disallowed_variants(listener: str) -> list[str]:
    host, port = listener.removeprefix("http://").split(":")
    return [
        f"{listener}/other",  # outside the path
        f"{listener}/hooksx",  # not at a segment boundary
        f"{listener}/hooks/../admin",  # climbs out
        f"{listener}/hooks/%2e%2e/admin",  # climbs out, encoded
        f"http://localhost:{port}/hooks/x",  # another host name
        f"http://{host}:{int(port) + 1}/hooks/x",  # another port
        f"https://{host}:{port}/hooks/x",  # another scheme
        f"http://user@{host}:{port}/hooks/x",  # credentials
        f"ftp://{host}:{port}/hooks/x",
        "not a url",
    ]


async def test_disallowed_webhook_urls_are_403_and_nothing_is_sent(
    serve, client: httpx.AsyncClient
) -> None:
    """The SSRF guard: a URL outside webhook_urls never gets a request, whatever the trick."""
    listener = Listener()
    hook_base = await serve(listener)
    base = await serve(ChannelApp(webhook_urls=[f"{hook_base}/hooks"]))
    async with subscribe(client, f"{base}/subscribe/w") as sub:
        for url in disallowed_variants(hook_base):
            reply = await publish(client, f"{base}/publish/w", sub.token, webhook(url))
            assert (reply.status_code, reply.json()["code"]) == (403, 403), url
    no_list = await serve(ChannelApp())
    async with subscribe(client, f"{no_list}/subscribe/w") as sub:
        url = f"{hook_base}/hooks/x"
        assert (
            await publish(client, f"{no_list}/publish/w", sub.token, webhook(url))
        ).status_code == 403
    assert listener.received == []


async def test_webhook_does_not_follow_redirects(serve, client: httpx.AsyncClient) -> None:
    """A 302 from an allowed URL is reported, not followed to the place it points at."""
    target = Listener()
    target_base = await serve(target)
    redirector = Listener(redirect_to=f"{target_base}/stolen")
    hook_base = await serve(redirector)
    base = await serve(ChannelApp(webhook_urls=[f"{hook_base}/hooks"]))
    async with subscribe(client, f"{base}/subscribe/w") as sub:
        reply = await publish(client, f"{base}/publish/w", sub.token, webhook(f"{hook_base}/hooks"))
        assert reply.json()["status"] == 302
    assert target.received == []


async def test_unreachable_webhook_is_502_and_slow_one_504(
    serve, client: httpx.AsyncClient
) -> None:
    """Nothing listening: 502; no answer within webhook_timeout: 504."""
    never = anyio.Event()
    slow_base = await serve(Listener(hold=never))
    closed = f"http://127.0.0.1:{free_port()}"
    channels = ChannelApp(webhook_urls=[f"{closed}/", f"{slow_base}/"], webhook_timeout=0.3)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/w") as sub:
        url = f"{base}/publish/w"
        down = await publish(client, url, sub.token, webhook(f"{closed}/x"))
        assert (down.status_code, down.json()["code"]) == (502, 502)
        with anyio.fail_after(WAIT):
            late = await publish(client, url, sub.token, webhook(f"{slow_base}/x"))
        assert (late.status_code, late.json()["code"]) == (504, 504)
    never.set()


@pytest.mark.parametrize(
    ("message", "names"),
    [({}, "`$.message`"), ({"url": 5}, "$.message.url"), ("http://x", "$.message")],
)
async def test_webhook_without_a_string_url_is_400(
    serve, client: httpx.AsyncClient, message: object, names: str
) -> None:
    """message must be an object with a string url."""
    base = await serve(ChannelApp(webhook_urls=["http://127.0.0.1:1/"]))
    async with subscribe(client, f"{base}/subscribe/w") as sub:
        body = {"type": "webhook", "message": message}
        reply = await publish(client, f"{base}/publish/w", sub.token, body)
        assert reply.status_code == 400
        assert names in reply.json()["message"]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda url: url.replace("/hooks/", "/hooks/\t"),
        lambda url: url.replace("/hooks/", "/hooks/\r\nX-Injected: 1\r\n/"),
        lambda url: url + "\n",
        lambda url: url.replace("http://", "http://\t"),
        lambda url: url.replace("/hooks/", "/hooks/\x00/"),
        lambda url: url + "\x7f",
    ],
    ids=["tab", "crlf", "trailing-lf", "tab-in-host", "nul", "del"],
)
@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_webhook_url_with_control_characters_is_400(
    serve, client: httpx.AsyncClient, spoil: Any, transport: str
) -> None:
    """A tab, CR or LF (which urlsplit drops) makes the URL a 400, not a 500 (issue 14)."""
    listener = Listener()
    hook_base = await serve(listener)
    base = await serve(ChannelApp(webhook_urls=[f"{hook_base}/hooks"]))
    body = webhook(spoil(f"{hook_base}/hooks/x"))
    if transport == "http":
        async with subscribe(client, f"{base}/subscribe/w") as sub:
            reply = (await publish(client, f"{base}/publish/w", sub.token, body)).json()
    else:
        url = "ws" + base[len("http") :] + "/ws/w"
        async with websockets.connect(url, open_timeout=WAIT) as ws:
            with anyio.fail_after(WAIT):
                await ws.recv()  # init
                await ws.send(json.dumps(body))
                while (reply := json.loads(await ws.recv()))["type"] not in ("ack", "error"):
                    pass
    assert reply["code"] == 400, reply
    assert "$.message.url" in reply["message"]
    assert listener.received == []


@pytest.mark.parametrize("entry", ["https://a.com/ho\tok", "https://a.com/\r\n", "http://\ta.com/"])
def test_webhook_allow_list_entries_with_control_characters_are_refused(entry: str) -> None:
    """webhook_urls and bridge URLs with a control character are a ValueError at construction."""
    with pytest.raises(ValueError, match="control character"):
        ChannelApp(webhook_urls=[entry])
    with pytest.raises(ValueError, match="control character"):
        ChannelApp().bridge("x", entry)
    assert not url_allowed(entry, [entry])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://a.com/hooks/x", True),
        ("https://a.com/hooks", True),
        ("https://A.COM:443/hooks/x", True),
        ("https://a.com/hooksx", False),
        ("https://a.com.evil.net/hooks", False),
        ("https://a.com@evil.net/hooks", False),
        ("http://a.com/hooks/x", False),
        ("https://a.com:8443/hooks/x", False),
        ("https://a.com/hooks/../x", False),
        ("https://b.com/anything", True),
        ("https://b.com", True),
    ],
)
def test_url_allow_list_rules(url: str, allowed: bool) -> None:
    """Scheme, host and port must match; the path must be under the entry at a segment boundary."""
    assert url_allowed(url, ["https://a.com/hooks", "https://b.com/"]) is allowed


# -- bridges -------------------------------------------------------------------------------------


async def test_bridge_posts_every_broadcast_of_matching_channels(
    serve, client: httpx.AsyncClient
) -> None:
    """Broadcasts on chats/{id} become CloudEvents at the bridge URL; others do not."""
    listener = Listener(fail_first=1)
    hook_base = await serve(listener)
    channels = ChannelApp()
    bridge = channels.bridge("chats/{id}", f"{hook_base}/bridge", retries=2)
    await serve(channels)
    first = await channels.publish("chats/1", {"text": "hello"})
    await channels.publish("lobby", "not bridged")
    second = await channels.publish("chats/2", {"text": "again"})
    received = await listener.wait_for(3)  # the first attempt failed with 500 and was retried
    events = [request["body"] for request in received[1:]]
    assert [event["id"] for event in events] == [first, second]
    assert [event["type"] for event in events] == ["channel_asgi.broadcast"] * 2
    assert events[0]["source"] == "chats/1"
    assert events[0]["data"]["message"] == {"text": "hello"}
    assert events[0]["data"]["id"] == first
    await eventually(lambda: bridge.sent, lambda sent: sent >= 2)  # counted at the reply
    assert (bridge.sent, bridge.failed, bridge.dropped) == (2, 0, 0)


async def test_a_slow_bridge_drops_instead_of_slowing_publishes(
    serve, client: httpx.AsyncClient
) -> None:
    """With a full queue, broadcasts still go out at once and the bridge counts its drops."""
    never = anyio.Event()  # the bridge's first POST is not answered during the test
    hook_base = await serve(Listener(hold=never))
    channels = ChannelApp()
    bridge = channels.bridge("busy", f"{hook_base}/b", queue_size=2, retries=0)
    base = await serve(channels)
    try:
        async with subscribe(client, f"{base}/subscribe/busy") as sub:
            with anyio.fail_after(WAIT):  # a publish that waited for the bridge would hang
                for n in range(20):
                    await channels.publish("busy", n)
            for _ in range(20):
                await sub.stream.until("broadcast")
        assert bridge.sent == 0  # every publish returned while the bridge's POST hung
        assert bridge.dropped >= 15
    finally:
        never.set()


def test_bridges_are_registered_before_start_with_a_valid_url() -> None:
    """A bad URL or options raise ValueError at registration."""
    channels = ChannelApp()
    with pytest.raises(ValueError):
        channels.bridge("x", "not a url")
    with pytest.raises(ValueError):
        channels.bridge("x", "https://a.com/", queue_size=0)

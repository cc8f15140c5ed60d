"""POST /publish/{channel}: types, replies, every refusal, and the order of checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from channel_asgi import ChannelApp

from .helpers import FakeClock, eventually, publish, subscribe

WK = "6b9f652a-63fd-47d7-a3bc-418c1096eb8c"


def chat(text: str = "hi") -> dict[str, object]:
    return {
        "type": "broadcast",
        "message": {"username": "ann", "type": "chat", "message_text": text},
        "widget_key": WK,
        "timestamp": 1.32,
    }


async def test_private_reaches_the_addressee_and_echoes_to_the_sender_only(
    serve, client: httpx.AsyncClient
) -> None:
    """A private message goes to the addressee's connections and back to the sending one."""
    base = await serve(ChannelApp(widget_keys={WK}))
    url = f"{base}/subscribe/p"
    async with (
        subscribe(client, url) as alice,
        subscribe(client, url) as bob,
        subscribe(client, url) as carol,
    ):
        body = {"type": "private", "message": "psst", "to_user_id": bob.user_id, "widget_key": WK}
        reply = await publish(client, f"{base}/publish/p", alice.token, body)
        assert reply.json() == {"code": 200, "message": reply.json()["message"]}
        for sub in (alice, bob):
            event = (await sub.stream.until("private")).json
            assert event["to_user_id"] == bob.user_id
            assert event["author_id"] == alice.user_id
            assert event["message"] == "psst"
            assert "id" not in event
        # carol gets nothing private: the next thing she sees is a later broadcast
        await publish(client, f"{base}/publish/p", alice.token, chat("after"))
        event = await carol.stream.next()
        while event.type == "system":
            event = await carol.stream.next()
        assert event.type == "broadcast"


async def test_private_to_oneself_is_delivered_once(serve, client: httpx.AsyncClient) -> None:
    """The sender and the addressee being one connection means one delivery."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/p") as me:
        body = {"type": "private", "message": 1, "to_user_id": me.user_id}
        assert (await publish(client, f"{base}/publish/p", me.token, body)).status_code == 200
        await publish(client, f"{base}/publish/p", me.token, chat())
        assert (await me.stream.next()).type == "private"
        assert (await me.stream.next()).type == "broadcast"


async def test_private_to_an_absent_user_is_200(serve, client: httpx.AsyncClient) -> None:
    """Presence is not revealed; the sender still gets its echo."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/p") as me:
        body = {"type": "private", "message": 1, "to_user_id": "nobody"}
        assert (await publish(client, f"{base}/publish/p", me.token, body)).status_code == 200
        assert (await me.stream.next()).json["to_user_id"] == "nobody"


async def test_request_sends_history_oldest_first_to_the_requesting_connection(
    serve, client: httpx.AsyncClient
) -> None:
    """type request puts one request event, the retained broadcasts, on the sender's stream."""
    channels = ChannelApp()
    base = await serve(channels)
    ids = [await channels.publish("h", {"n": n}) for n in range(3)]
    async with subscribe(client, f"{base}/subscribe/h") as sub:
        reply = await publish(client, f"{base}/publish/h", sub.token, {"type": "request"})
        assert reply.status_code == 200
        event = (await sub.stream.until("request")).json
        assert [item["id"] for item in event["message"]] == ids
        assert [item["message"]["n"] for item in event["message"]] == [0, 1, 2]
        assert event["to_user_id"] == sub.user_id


async def test_request_on_an_empty_channel_sends_an_empty_array(
    serve, client: httpx.AsyncClient
) -> None:
    """No history is an empty array, not silence."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/h") as sub:
        await publish(client, f"{base}/publish/h", sub.token, {"type": "request"})
        assert (await sub.stream.until("request")).json["message"] == []


async def test_large_request_reply_is_split_into_arrays_of_at_most_256_kib(
    serve, client: httpx.AsyncClient
) -> None:
    """Over 256 KiB of history arrives as consecutive request events, in order."""
    channels = ChannelApp()
    base = await serve(channels)
    ids = [await channels.publish("big", "x" * 20000) for _ in range(40)]
    async with subscribe(client, f"{base}/subscribe/big") as sub:
        await publish(client, f"{base}/publish/big", sub.token, {"type": "request"})
        received: list[str] = []
        while len(received) < len(ids):
            event = await sub.stream.until("request")
            array = json.dumps(event.json["message"], separators=(",", ":"))
            assert len(array.encode()) <= 256 * 1024
            received += [item["id"] for item in event.json["message"]]
        assert received == ids


async def test_request_after_the_connection_closed_is_410(serve, client: httpx.AsyncClient) -> None:
    """request needs its connection open; broadcast with the same token still works."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/g") as sub:
        token = sub.token
    reply = await eventually(  # until the server has seen the connection go
        lambda: publish(client, f"{base}/publish/g", token, {"type": "request"}),
        lambda reply: reply.status_code == 410,
    )
    assert reply.json()["code"] == 410
    assert (await publish(client, f"{base}/publish/g", token, chat())).status_code == 200


async def test_author_and_stream_id_come_from_the_token_and_path(
    serve, client: httpx.AsyncClient
) -> None:
    """A body's author_id and stream_id are ignored, and extra fields too."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/a") as sub:
        body = {**chat(), "author_id": "forged", "stream_id": "other", "extra": [1, 2]}
        await publish(client, f"{base}/publish/a", sub.token, body)
        event = (await sub.stream.until("broadcast")).json
        assert event["author_id"] == sub.user_id
        assert event["stream_id"] == "a"
        assert "extra" not in event


async def test_widget_key_is_never_echoed(serve, client: httpx.AsyncClient) -> None:
    """Events carry an empty widget_key whatever the sender used."""
    base = await serve(ChannelApp(widget_keys={WK}))
    async with subscribe(client, f"{base}/subscribe/a") as sub:
        await publish(client, f"{base}/publish/a", sub.token, chat())
        raw = (await sub.stream.until("broadcast")).data
        assert WK not in raw
        assert json.loads(raw)["widget_key"] == ""


async def test_widget_key_is_optional_when_none_are_configured(
    serve, client: httpx.AsyncClient
) -> None:
    """Without widget_keys the field may be missing or anything."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/a") as sub:
        body = {"type": "broadcast", "message": 1}
        assert (await publish(client, f"{base}/publish/a", sub.token, body)).status_code == 200
        body["widget_key"] = "whatever"
        assert (await publish(client, f"{base}/publish/a", sub.token, body)).status_code == 200


async def test_integer_timestamp_is_accepted(serve, client: httpx.AsyncClient) -> None:
    """timestamp may be an integer."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/a") as sub:
        body = {"type": "broadcast", "message": 1, "timestamp": 7}
        assert (await publish(client, f"{base}/publish/a", sub.token, body)).status_code == 200
        assert (await sub.stream.until("broadcast")).json["timestamp"] == 7.0


async def test_message_with_line_breaks_between_tokens_stays_on_one_data_line(
    serve, client: httpx.AsyncClient
) -> None:
    """Pretty-printed JSON bodies are delivered as compact single-line events."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/a") as sub:
        body = b'{"type": "broadcast",\n "message": {\r\n  "text": "a\\nb"\n }\n}'
        reply = await client.post(
            f"{base}/publish/a",
            params={"token": sub.token},
            content=body,
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 200
        event = await sub.stream.until("broadcast")
        assert event.json["message"] == {"text": "a\nb"}


# -- refusals ------------------------------------------------------------------------------------

BAD_BODIES = [
    (b"{", "Malformed"),
    (b"[]", "object"),
    (b'{"type": "nope", "message": 1}', "$.type"),
    (b'{"message": 1}', "`type`"),
    (b'{"type": "broadcast"}', "`message`"),
    (b'{"type": "broadcast", "message": null}', "null"),
    (b'{"type": "private", "message": 1}', "`to_user_id`"),
    (b'{"type": "private", "message": 1, "to_user_id": 5}', "$.to_user_id"),
    (b'{"type": "private", "message": 1, "to_user_id": ""}', "to_user_id"),
    (b'{"type": "broadcast", "message": 1, "widget_key": 5}', "$.widget_key"),
    (b'{"type": "broadcast", "message": 1, "widget_key": null}', "$.widget_key"),
    (b'{"type": "broadcast", "message": 1, "timestamp": "1"}', "$.timestamp"),
    (b'{"type": "broadcast", "message": 1, "timestamp": true}', "$.timestamp"),
    (b'{"type": "broadcast", "message": 1, "timestamp": -1}', "$.timestamp"),
    (b'{"type": "broadcast", "message": 1, "timestamp": NaN}', "Malformed"),
    (b'{"type": "broadcast", "message": 1, "timestamp": Infinity}', "Malformed"),
    (b'{"type": "broadcast", "message": "\xff"}', "UTF-8"),
    (b'{"type": "webhook"}', "`message`"),
]


@pytest.mark.parametrize(("body", "names"), BAD_BODIES)
async def test_bad_bodies_are_400_naming_the_problem(
    serve, client: httpx.AsyncClient, body: bytes, names: str
) -> None:
    """Schema and JSON errors are 400 with a message that says what is wrong, and where."""
    channels = ChannelApp()
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/b") as sub:
        reply = await client.post(
            f"{base}/publish/b",
            params={"token": sub.token},
            content=body,
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 400
        assert reply.json()["code"] == 400
        assert names in reply.json()["message"]
    history = await channels.storage.history("b")
    assert history.events == []


async def test_missing_or_unknown_widget_key_is_403(serve, client: httpx.AsyncClient) -> None:
    """With widget_keys configured, every publish needs one of them."""
    base = await serve(ChannelApp(widget_keys={WK}))
    async with subscribe(client, f"{base}/subscribe/k") as sub:
        for key in (None, "other"):
            body = {"type": "broadcast", "message": 1}
            if key is not None:
                body["widget_key"] = key
            reply = await publish(client, f"{base}/publish/k", sub.token, body)
            assert reply.status_code == 403
            assert "widget_key" in reply.json()["message"]


async def test_tokens_missing_forged_tampered_expired_are_401(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Only a genuine, unexpired token may publish."""
    base = await serve(ChannelApp(token_ttl=0.5))
    async with subscribe(client, f"{base}/subscribe/t") as sub:
        token = sub.token
        body, signature = token.split(".")
        tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + signature
        for bad in ("", "garbage", "a.b.c", tampered, body + "." + signature[::-1], "é.x"):
            reply = await publish(client, f"{base}/publish/t", bad, chat())
            assert reply.status_code == 401, bad
        reply = await client.post(f"{base}/publish/t", json=chat())
        assert reply.status_code == 401
        clock.advance(0.6)
        reply = await publish(client, f"{base}/publish/t", token, chat())
        assert reply.status_code == 401
        assert "expired" in reply.json()["message"]


async def test_token_from_another_app_secret_is_401(serve, client: httpx.AsyncClient) -> None:
    """A token signed with another secret is forged."""
    one = await serve(ChannelApp(secret="one"))
    two = await serve(ChannelApp(secret="two"))
    async with subscribe(client, f"{one}/subscribe/t") as sub:
        reply = await publish(client, f"{two}/publish/t", sub.token, chat())
        assert reply.status_code == 401


async def test_token_for_another_channel_is_403(serve, client: httpx.AsyncClient) -> None:
    """A token only publishes to the channel it was issued for."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/one") as sub:
        reply = await publish(client, f"{base}/publish/two", sub.token, chat())
        assert reply.status_code == 403


async def test_bearer_header_carries_the_token_too(serve, client: httpx.AsyncClient) -> None:
    """Authorization: Bearer is accepted as well as ?token=."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/t") as sub:
        reply = await client.post(
            f"{base}/publish/t", json=chat(), headers={"authorization": f"Bearer {sub.token}"}
        )
        assert reply.status_code == 200


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/merge-patch+json", 200),
    ],
)
async def test_content_type_must_be_json(
    serve, client: httpx.AsyncClient, content_type: str | None, status: int
) -> None:
    """application/json or application/*+json, any charset; anything else is 415."""
    base = await serve(ChannelApp())
    async with subscribe(client, f"{base}/subscribe/c") as sub:
        headers = {} if content_type is None else {"content-type": content_type}
        reply = await client.post(
            f"{base}/publish/c",
            params={"token": sub.token},
            content=json.dumps(chat()).encode(),
            headers=headers,
        )
        assert reply.status_code == status
        assert reply.json()["code"] == status


async def test_body_over_the_limit_is_413(serve, client: httpx.AsyncClient) -> None:
    """Declared or streamed, a body over max_body_bytes is refused."""
    base = await serve(ChannelApp(max_body_bytes=1024))
    async with subscribe(client, f"{base}/subscribe/s") as sub:
        body = chat("x" * 2000)
        reply = await publish(client, f"{base}/publish/s", sub.token, body)
        assert reply.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 100

        reply = await client.post(
            f"{base}/publish/s",
            params={"token": sub.token},
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 413
        assert reply.json()["code"] == 413


async def test_wrong_method_on_publish_is_405_with_allow(serve, client: httpx.AsyncClient) -> None:
    """GET, PUT and DELETE on publish are 405."""
    base = await serve(ChannelApp())
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        reply = await client.request(method, f"{base}/publish/1")
        assert reply.status_code == 405
        assert reply.headers["allow"] == "POST, OPTIONS"


ORDER = [
    # (description, path, content type, body, token kind, expected status)
    ("unknown path first", "/nope/x", None, b"{", "none", 404),
    ("bad name before closed", "/publish/bad%20name", None, b"{", "none", 400),
    ("closed before content type", "/publish/closed", None, b"{", "none", 404),
    ("content type before size", "/publish/open", "text/plain", b"x" * 5000, "none", 415),
    ("size before token", "/publish/open", "application/json", b"x" * 5000, "none", 413),
    ("token before body", "/publish/open", "application/json", b"{", "forged", 401),
    ("channel of token before body", "/publish/other", "application/json", b"{", "valid", 403),
    ("body before widget key", "/publish/open", "application/json", b"{", "valid", 400),
    (
        "widget key",
        "/publish/open",
        "application/json",
        b'{"type": "broadcast", "message": 1, "widget_key": "no"}',
        "valid",
        403,
    ),
]


@pytest.mark.parametrize(
    ("path", "content_type", "body", "token", "status"),
    [row[1:] for row in ORDER],
    ids=[row[0] for row in ORDER],
)
async def test_checks_run_in_the_documented_order(
    serve,
    client: httpx.AsyncClient,
    path: str,
    content_type: str | None,
    body: bytes,
    token: str,
    status: int,
) -> None:
    """Each request fails at exactly the first check it does not pass."""
    channels = ChannelApp(widget_keys={WK}, max_body_bytes=4096)
    base = await serve(channels)
    await channels.close_channel("closed")
    async with subscribe(client, f"{base}/subscribe/open") as sub:
        params = {"none": {}, "forged": {"token": "x.y"}, "valid": {"token": sub.token}}[token]
        headers = {} if content_type is None else {"content-type": content_type}
        reply = await client.post(base + path, params=params, content=body, headers=headers)
        assert reply.status_code == status, reply.json()
        assert reply.json()["code"] == status


async def test_a_refused_publish_reaches_nobody_and_is_not_stored(
    serve, client: httpx.AsyncClient
) -> None:
    """After a run of refusals the subscriber's next event is the one accepted broadcast."""
    channels = ChannelApp(widget_keys={WK})
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/r") as sub:
        url = f"{base}/publish/r"
        refused = [
            await publish(client, url, "forged.token", chat("a")),
            await publish(client, url, sub.token, {**chat("b"), "widget_key": "bad"}),
            await publish(client, url, sub.token, {**chat("c"), "timestamp": -1}),
        ]
        assert [reply.status_code for reply in refused] == [401, 403, 400]
        ok = await publish(client, url, sub.token, chat("d"))
        event = await sub.stream.next()
        assert event.id == ok.json()["id"]
        assert event.json["message"]["message_text"] == "d"
    assert len((await channels.storage.history("r")).events) == 1

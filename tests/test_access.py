"""Who may do what: identity tokens, the Auth protocol, channel patterns and rate limits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

import anyio
import httpx
import jwt
import pytest
import websockets

from channel_asgi import ChannelApp, Request
from channel_asgi.client import Transport

from .helpers import WAIT, FakeClock, publish, subscribe

SECRET = "x" * 40


def chat(text: str = "hi") -> dict[str, object]:
    return {"type": "broadcast", "message": {"text": text}}


def forge(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    base = {"sub": "mallory", "aud": "channel_asgi", "exp": time.time() + 60}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


# -- identity tokens -----------------------------------------------------------------------------


async def test_identity_token_makes_the_stream_run_as_its_user(
    serve, client: httpx.AsyncClient
) -> None:
    """init carries the token's user, and publishes are authored by it."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("alice")
    async with subscribe(client, f"{base}/subscribe/room?token={token}") as sub:
        assert sub.user_id == "alice"
        await publish(client, f"{base}/publish/room", sub.token, chat())
        assert (await sub.stream.until("broadcast")).json["author_id"] == "alice"


async def test_identity_token_works_as_a_bearer_header(serve, client: httpx.AsyncClient) -> None:
    """Python clients may send it as Authorization: Bearer."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    headers = {"authorization": f"Bearer {channels.issue_token('bob')}"}
    async with subscribe(client, f"{base}/subscribe/room", headers) as sub:
        assert sub.user_id == "bob"


async def test_identity_token_is_401_once_its_ttl_is_over(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A token subscribes until ``ttl`` seconds after issue, then is refused as expired."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("dave", ttl=60)
    clock.advance(59)
    async with subscribe(client, f"{base}/subscribe/room?token={token}") as sub:
        assert sub.user_id == "dave"
    clock.advance(1)
    reply = await client.get(f"{base}/subscribe/room", params={"token": token})
    assert reply.status_code == 401
    assert "expired" in reply.json()["message"]


def test_issue_token_is_a_standard_jwt() -> None:
    """HS256, aud channel_asgi, sub, exp, iat, and channels when given."""
    token = ChannelApp(secret=SECRET).issue_token("carol", channels=["chats/{id}"], ttl=60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="channel_asgi")
    assert claims["sub"] == "carol"
    assert claims["channels"] == ["chats/{id}"]
    assert 55 <= claims["exp"] - claims["iat"] <= 60


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "garbage": lambda: "not-a-jwt",
    "tampered": lambda: ChannelApp(secret=SECRET).issue_token("alice")[:-3] + "AAA",
    "other secret": lambda: forge({}, key="y" * 40),
    "expired": lambda: forge({"exp": time.time() - 5}),
    "not yet valid": lambda: forge({"nbf": time.time() + 300}),
    "issued in the future": lambda: forge({"iat": time.time() + 300}),
    "exp not a number": lambda: forge({"exp": "soon"}),
    "nbf not a number": lambda: forge({"nbf": "now"}),
    "iat not a number": lambda: forge({"iat": [1]}),
    "wrong audience": lambda: forge({"aud": "someone-else"}),
    "no audience": lambda: jwt.encode({"sub": "m", "exp": time.time() + 60}, SECRET),
    "no expiry": lambda: jwt.encode({"sub": "m", "aud": "channel_asgi"}, SECRET),
    "alg none": lambda: jwt.encode(
        {"sub": "m", "aud": "channel_asgi", "exp": time.time() + 60}, "", algorithm="none"
    ),
    "HS512": lambda: forge({}, key="x" * 64, algorithm="HS512"),
    "empty sub": lambda: forge({"sub": ""}),
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_bad_identity_tokens_are_401_never_anonymous(
    serve, client: httpx.AsyncClient, kind: str
) -> None:
    """Every forged, tampered, expired or foreign token is refused before the stream starts."""
    base = await serve(ChannelApp(secret=SECRET))
    reply = await client.get(f"{base}/subscribe/room", params={"token": BAD_TOKENS[kind]()})
    assert (reply.status_code, reply.json()["code"]) == (401, 401)


@pytest.mark.parametrize(
    ("allowed", "channel", "status"),
    [
        (["room"], "room", 200),
        (["room"], "other", 403),
        (["chats/{id}"], "chats/7", 200),
        (["chats/{id}"], "chats/7/x", 403),
        (["a", "chats/{id}"], "a", 200),
    ],
)
async def test_identity_token_limited_to_channels(
    serve, client: httpx.AsyncClient, allowed: list[str], channel: str, status: int
) -> None:
    """A valid token for other channels is 403."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("dave", channels=allowed)
    if status == 200:
        async with subscribe(client, f"{base}/subscribe/{channel}?token={token}") as sub:
            assert sub.user_id == "dave"
    else:
        reply = await client.get(f"{base}/subscribe/{channel}", params={"token": token})
        assert reply.status_code == status


# -- the Auth protocol ---------------------------------------------------------------------------


class CookieAuth:
    """Identifies users by a 'user' cookie; only admins may broadcast on 'announcements'."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str, str]] = []

    async def identify(self, request: Request) -> str | None:
        return request.cookies.get("user")

    async def allow(self, user_id: str | None, channel: str, action: str) -> bool:
        self.asked.append((user_id, channel, action))
        if channel == "announcements" and action != "subscribe":
            return user_id == "admin"
        return channel != "secret"


async def test_auth_identifies_from_the_request_and_decides(
    serve, client: httpx.AsyncClient
) -> None:
    """identify() names the user; allow() is asked for subscribe and every publish."""
    auth = CookieAuth()
    base = await serve(ChannelApp(auth=auth, secret=SECRET))
    async with (
        subscribe(client, f"{base}/subscribe/announcements", {"cookie": "user=admin"}) as admin,
        subscribe(client, f"{base}/subscribe/announcements", {"cookie": "user=eve"}) as eve,
    ):
        assert (admin.user_id, eve.user_id) == ("admin", "eve")
        url = f"{base}/publish/announcements"
        assert (await publish(client, url, admin.token, chat())).status_code == 200
        assert (await publish(client, url, eve.token, chat())).status_code == 403
    assert ("admin", "announcements", "subscribe") in auth.asked
    assert ("eve", "announcements", "broadcast") in auth.asked


async def test_auth_refusing_is_403_for_users_and_401_for_anonymous(
    serve, client: httpx.AsyncClient
) -> None:
    """allow() False: 403 when signed in, 401 when anonymous."""
    base = await serve(ChannelApp(auth=CookieAuth(), secret=SECRET))
    signed_in = await client.get(f"{base}/subscribe/secret", headers={"cookie": "user=eve"})
    anonymous = await client.get(f"{base}/subscribe/secret")
    assert (signed_in.status_code, anonymous.status_code) == (403, 401)


async def test_identity_token_wins_over_auth_identify(serve, client: httpx.AsyncClient) -> None:
    """A valid identity token decides the user even when a session cookie says otherwise."""
    channels = ChannelApp(auth=CookieAuth(), secret=SECRET)
    base = await serve(channels)
    url = f"{base}/subscribe/room?token={channels.issue_token('frank')}"
    async with subscribe(client, url, {"cookie": "user=eve"}) as sub:
        assert sub.user_id == "frank"


async def test_auth_returning_none_is_an_anonymous_user(serve, client: httpx.AsyncClient) -> None:
    """No cookie: a fresh anonymous id."""
    base = await serve(ChannelApp(auth=CookieAuth(), secret=SECRET))
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        assert len(sub.user_id) == 36


# -- channel patterns ----------------------------------------------------------------------------


async def test_pattern_authoriser_gets_user_action_and_params(
    serve, client: httpx.AsyncClient
) -> None:
    """chats/{id} is open to its members only; the authoriser sees the path parameters."""
    members = {"1": {"alice", "bob"}}
    seen: list[tuple[str | None, str, Mapping[str, str]]] = []

    async def members_only(user_id: str | None, action: str, params: Mapping[str, str]) -> bool:
        seen.append((user_id, action, dict(params)))
        return user_id in members.get(params["id"], set())

    channels = ChannelApp(secret=SECRET)
    channels.channel("chats/{id}", authorize=members_only)
    base = await serve(channels)
    alice = channels.issue_token("alice")
    mallory = channels.issue_token("mallory")
    async with subscribe(client, f"{base}/subscribe/chats/1?token={alice}") as sub:
        assert (await publish(client, f"{base}/publish/chats/1", sub.token, chat())).is_success
    assert (
        await client.get(f"{base}/subscribe/chats/1", params={"token": mallory})
    ).status_code == 403
    assert (
        await client.get(f"{base}/subscribe/chats/2", params={"token": alice})
    ).status_code == 403
    assert ("alice", "subscribe", {"id": "1"}) in seen
    assert ("alice", "broadcast", {"id": "1"}) in seen


async def test_anonymous_toggles(serve, client: httpx.AsyncClient) -> None:
    """anonymous_subscribe=False is 401 for anonymous; anonymous_publish=False is 403."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("members/{x}", anonymous_subscribe=False)
    channels.channel("readonly/{x}", anonymous_publish=False)
    base = await serve(channels)
    assert (await client.get(f"{base}/subscribe/members/1")).status_code == 401
    async with subscribe(client, f"{base}/subscribe/members/1?token={channels.issue_token('u')}"):
        pass
    async with subscribe(client, f"{base}/subscribe/readonly/1") as anonymous:
        reply = await publish(client, f"{base}/publish/readonly/1", anonymous.token, chat())
        assert reply.status_code == 403
    token = channels.issue_token("u")
    async with subscribe(client, f"{base}/subscribe/readonly/1?token={token}") as signed_in:
        reply = await publish(client, f"{base}/publish/readonly/1", signed_in.token, chat())
        assert reply.status_code == 200


async def test_pattern_history_and_types(serve, client: httpx.AsyncClient) -> None:
    """history overrides history_size; types limits every publish type."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("polls/{id}", history=2, types={"broadcast"})
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/polls/1") as sub:
        url = f"{base}/publish/polls/1"
        for n in range(4):
            assert (await publish(client, url, sub.token, chat(str(n)))).status_code == 200
        private = {"type": "private", "message": 1, "to_user_id": "x"}
        assert (await publish(client, url, sub.token, private)).status_code == 403
        assert (await publish(client, url, sub.token, {"type": "request"})).status_code == 403
    assert len((await channels.storage.history("polls/1")).events) == 2


def _history_rules(channels: ChannelApp) -> None:
    """polls/* never shows its history; in chats/*, alice alone may read it."""

    def alice_reads_history(user_id: str | None, action: str, params: Mapping[str, str]) -> bool:
        return action != "request" or user_id == "alice"

    channels.channel("polls/{id}", types=["broadcast"])
    channels.channel("chats/{id}", authorize=alice_reads_history)
    channels.channel("shows/{id}", anonymous_publish=False)  # read-only for anonymous viewers


@pytest.mark.parametrize(
    ("channel", "user", "replayed"),
    [
        ("polls/1", None, False),  # types without request
        ("polls/1", "alice", False),
        ("chats/1", "bob", False),  # authorize refuses "request"
        ("chats/1", "alice", True),
        ("open", None, True),  # no pattern: everything allowed
        ("shows/1", None, True),  # anonymous_publish is about writing: viewers still resume
    ],
)
@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_resume_replays_only_with_the_history_permission(
    serve,
    client: httpx.AsyncClient,
    channel: str,
    user: str | None,
    replayed: bool,
    transport: Transport,
) -> None:
    """A resume is a read of the history: refused ``request``, no replay, ``recovered: false``."""
    channels = ChannelApp(secret=SECRET)
    _history_rules(channels)
    base = await serve(channels)
    retained = [await channels.publish(channel, f"old {n}") for n in range(3)]
    query = f"last_event_id={retained[0]}"
    if user is not None:
        query += f"&token={channels.issue_token(user)}"
    seen: list[object] = []
    if transport == "sse":
        async with subscribe(client, f"{base}/subscribe/{channel}?{query}") as sub:
            init = sub.init
            await channels.publish(channel, "live")
            while not seen or seen[-1] != "live":
                seen.append((await sub.stream.until("broadcast")).json["message"])
    else:
        url = "ws" + base[len("http") :] + f"/ws/{channel}?{query}"
        async with websockets.connect(url, open_timeout=WAIT) as ws:
            with anyio.fail_after(WAIT):
                init = json.loads(await ws.recv())
                await channels.publish(channel, "live")
                while not seen or seen[-1] != "live":
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "broadcast":
                        seen.append(frame["message"])
    assert init["message"]["recovered"] is replayed
    assert seen == (["old 1", "old 2", "live"] if replayed else ["live"])


async def test_request_and_resume_share_one_history_permission(
    serve, client: httpx.AsyncClient
) -> None:
    """Auth.allow refusing "request" refuses the publish (403) and the replay alike."""

    class NoHistory:
        async def identify(self, request: Request) -> str | None:
            return "carol"

        async def allow(self, user_id: str | None, channel: str, action: str) -> bool:
            return action != "request"

    channels = ChannelApp(secret=SECRET, auth=NoHistory())
    base = await serve(channels)
    first = await channels.publish("room", "old")
    assert first is not None
    await channels.publish("room", "older still retained")
    async with subscribe(client, f"{base}/subscribe/room", {"Last-Event-ID": first}) as sub:
        assert sub.init["message"]["recovered"] is False
        reply = await publish(client, f"{base}/publish/room", sub.token, {"type": "request"})
        assert reply.status_code == 403
        await channels.publish("room", "live")
        assert (await sub.stream.until("broadcast")).json["message"] == "live"


async def test_the_most_specific_pattern_wins_and_ties_go_to_the_first(
    serve, client: httpx.AsyncClient
) -> None:
    """chats/lobby beats chats/{id}; of two equally specific patterns the first counts."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("{kind}/{id}", anonymous_subscribe=False)
    channels.channel("chats/{id}", anonymous_subscribe=False)
    channels.channel("chats/lobby")  # open
    channels.channel("{a}/x", anonymous_subscribe=True)
    channels.channel("x/{b}", anonymous_subscribe=False)
    base = await serve(channels)
    assert (await client.get(f"{base}/subscribe/chats/7")).status_code == 401
    async with subscribe(client, f"{base}/subscribe/chats/lobby"):
        pass
    async with subscribe(client, f"{base}/subscribe/x/x"):  # "{a}/x" registered first
        pass
    async with subscribe(client, f"{base}/subscribe/unmatched"):  # defaults
        pass


@pytest.mark.parametrize(
    ("pattern", "kwargs"),
    [
        ("chats/{id", {}),
        ("chats//x", {}),
        ("chats/pre{id}", {}),
        ("bad name", {}),
        ("ok", {"types": {"shout"}}),
        ("ok", {"history": -1}),
        ("ok", {"slow_mode": -1}),
        ("ok", {"slow_mode": float("nan")}),
        ("ok", {"slow_mode": "5"}),
        ("ok", {"slow_mode": True}),
        ("ok", {"history": True}),
        ("ok", {"archive": -1}),
        ("ok", {"archive": "5000"}),
        ("ok", {"archive": False}),
    ],
)
def test_bad_patterns_are_refused(pattern: str, kwargs: dict[str, object]) -> None:
    """Malformed patterns and options raise ValueError at registration."""
    with pytest.raises(ValueError):
        ChannelApp(secret=SECRET).channel(pattern, **kwargs)  # type: ignore[arg-type]


# -- rate limits ---------------------------------------------------------------------------------


async def test_rate_limit_per_user_is_429_with_retry_after(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Past the burst: 429, Retry-After in whole seconds; the bucket refills."""
    base = await serve(ChannelApp(secret=SECRET, rate_limit=(2.0, 2)))
    async with subscribe(client, f"{base}/subscribe/r") as sub:
        url = f"{base}/publish/r"
        assert [(await publish(client, url, sub.token, chat())).status_code for _ in range(2)] == [
            200,
            200,
        ]
        refused = await publish(client, url, sub.token, chat())
        assert (refused.status_code, refused.json()["code"]) == (429, 429)
        assert refused.headers["retry-after"] == "1"
        clock.advance(0.6)
        assert (await publish(client, url, sub.token, chat())).status_code == 200


async def test_refused_publishes_spend_no_tokens(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Hammering while limited does not push the next allowed publish further away."""
    base = await serve(ChannelApp(secret=SECRET, rate_limit=(1.0, 1)))
    async with subscribe(client, f"{base}/subscribe/r") as sub:
        url = f"{base}/publish/r"
        assert (await publish(client, url, sub.token, chat())).status_code == 200
        for _ in range(10):
            assert (await publish(client, url, sub.token, chat())).status_code == 429
        clock.advance(1.0)  # exactly one token's refill: the refusals took none
        assert (await publish(client, url, sub.token, chat())).status_code == 200


async def test_rate_limit_comes_before_the_body_check(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A malformed body from a limited user is 429, not 400 (the documented order)."""
    base = await serve(ChannelApp(secret=SECRET, rate_limit=(0.1, 1)))
    async with subscribe(client, f"{base}/subscribe/r") as sub:
        url = f"{base}/publish/r"
        assert (await publish(client, url, sub.token, chat())).status_code == 200
        reply = await client.post(
            url,
            params={"token": sub.token},
            content=b"{",
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 429
        assert reply.headers["retry-after"] == "10"


async def test_ip_rate_limit_is_shared_by_users_of_one_address(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Two users from one address share its bucket."""
    base = await serve(ChannelApp(secret=SECRET, ip_rate_limit=(0.5, 2)))
    async with (
        subscribe(client, f"{base}/subscribe/r") as one,
        subscribe(client, f"{base}/subscribe/r") as two,
    ):
        url = f"{base}/publish/r"
        assert (await publish(client, url, one.token, chat())).status_code == 200
        assert (await publish(client, url, two.token, chat())).status_code == 200
        assert (await publish(client, url, one.token, chat())).status_code == 429
        assert (await publish(client, url, two.token, chat())).status_code == 429


def test_request_cookies_and_client_of_a_plain_scope() -> None:
    """Request, as Auth.identify sees it: a malformed Cookie header is no cookies, not an error."""
    bad = Request({"type": "http", "headers": [(b"cookie", b'a="unterminated')], "client": None})
    assert bad.cookies == {}
    assert bad.client is None
    good = Request({"type": "http", "headers": [(b"cookie", b"s=1")], "client": ("10.0.0.1", 5)})
    assert (good.cookies, good.client) == ({"s": "1"}, "10.0.0.1")

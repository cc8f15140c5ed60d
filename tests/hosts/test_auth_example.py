"""``examples/fastapi_auth``: a login, a negotiate route and private rooms, over real HTTP.

Each test starts the example under uvicorn in a child process (``uvicorn
examples.fastapi_auth.main:app``), with a channel secret it knows so that it can check and mint
identity tokens the way another service would. Room 1 is alice's and bob's; carol is not in it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import httpx
import jwt
import pytest

from ..helpers import WAIT, publish, subscribe

if TYPE_CHECKING:
    from ..conftest import ServerProcess

ROOT: Final = Path(__file__).resolve().parents[2]
CHANNEL_SECRET: Final = "test-channel-secret-" + "x" * 32
PASSWORDS: Final = {"alice": "wonderland", "bob": "builder", "carol": "singer"}

SignIn = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
def base(server_process: Callable[..., ServerProcess]) -> str:
    """Serve the example with uvicorn in a child process; return its base URL."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        "PYTHONPATH": path,
        "CHANNEL_SECRET": CHANNEL_SECRET,
        "SESSION_SECRET": "test-session-secret-" + "y" * 32,
    }
    command = ["-m", "uvicorn", "examples.fastapi_auth.main:app", "--port", "{port}"]
    return server_process([*command, "--log-level", "warning"], env=env).base


@pytest.fixture
async def sign_in(base: str) -> AsyncIterator[SignIn]:
    """Return ``sign_in(user)``: a client of its own (its own cookie jar), signed in as ``user``."""
    clients: list[httpx.AsyncClient] = []

    async def start(user: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=base, trust_env=False, timeout=WAIT)
        clients.append(http)
        reply = await http.post("/login", json={"username": user, "password": PASSWORDS[user]})
        assert reply.status_code == 200, reply.text
        assert "session" in http.cookies
        return http

    yield start
    for http in clients:
        await http.aclose()


async def negotiate(http: httpx.AsyncClient) -> str:
    """Return the identity token ``GET /negotiate`` hands the signed-in user."""
    reply = await http.get("/negotiate")
    assert reply.status_code == 200, reply.text
    assert reply.json()["url"] == "/channel"
    return str(reply.json()["token"])


def mint(user: str, **claims: object) -> str:
    """Mint an identity token with PyJWT, as another service holding the secret would."""
    now = int(time.time())
    payload = {"sub": user, "aud": "channel_asgi", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(payload, CHANNEL_SECRET, algorithm="HS256")


def with_claims(token: str, **claims: object) -> str:
    """Return ``token`` with its payload changed but its signature kept (a forgery)."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changed = base64.urlsafe_b64encode(json.dumps({**decoded, **claims}).encode())
    return f"{header}.{changed.decode().rstrip('=')}.{signature}"


def chat(text: str) -> dict[str, object]:
    return {"type": "broadcast", "message": {"text": text}}


async def test_page_login_and_negotiate(base: str, client: httpx.AsyncClient) -> None:
    """The page is served; /negotiate is 401 until a login with the right password succeeds."""
    page = await client.get(f"{base}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/negotiate" in page.text and "new EventSource(" in page.text

    assert (await client.get(f"{base}/negotiate")).status_code == 401
    for username, password in [("alice", "builder"), ("mallory", "wonderland"), ("", "")]:
        reply = await client.post(
            f"{base}/login", json={"username": username, "password": password}
        )
        assert reply.status_code == 401, (username, reply.text)
        assert (await client.get(f"{base}/negotiate")).status_code == 401

    reply = await client.post(f"{base}/login", json={"username": "alice", "password": "wonderland"})
    assert reply.status_code == 200, reply.text
    negotiated = (await client.get(f"{base}/negotiate")).json()
    assert negotiated["rooms"] == ["1", "2"]
    claims = jwt.decode(
        negotiated["token"], CHANNEL_SECRET, algorithms=["HS256"], audience="channel_asgi"
    )
    assert claims["sub"] == "alice"
    assert claims["channels"] == ["chats/1", "chats/2"]
    assert claims["exp"] > time.time()

    assert (await client.post(f"{base}/logout")).status_code == 200
    assert (await client.get(f"{base}/negotiate")).status_code == 401


async def test_members_subscribe_with_their_tokens_and_reach_each_other(
    base: str, sign_in: SignIn
) -> None:
    """alice's and bob's tokens open chats/1 as themselves; alice's broadcast reaches bob."""
    alice, bob = await sign_in("alice"), await sign_in("bob")
    url = f"{base}/channel/subscribe/chats/1"
    async with (
        subscribe(bob, f"{url}?token={await negotiate(bob)}") as bob_sub,
        subscribe(alice, f"{url}?token={await negotiate(alice)}") as alice_sub,
    ):
        assert (alice_sub.user_id, bob_sub.user_id) == ("alice", "bob")
        assert alice_sub.init["message"]["viewer_count"] == 2
        reply = await publish(alice, "/channel/publish/chats/1", alice_sub.token, chat("hi bob"))
        assert reply.status_code == 200, reply.text
        for sub in (bob_sub, alice_sub):
            event = (await sub.stream.until("broadcast")).json
            assert (event["author_id"], event["message"]) == ("alice", {"text": "hi bob"})

        reply = await publish(bob, "/channel/publish/chats/1", bob_sub.token, {"type": "request"})
        assert reply.status_code == 200, reply.text
        history = (await bob_sub.stream.until("request")).json["message"]
        assert [item["message"] for item in history] == [{"text": "hi bob"}]


async def test_the_session_cookie_is_a_second_way_in(
    base: str, client: httpx.AsyncClient, sign_in: SignIn
) -> None:
    """Without a token, SessionAuth names the user: members get in, others 403, anonymous 401."""
    alice, carol = await sign_in("alice"), await sign_in("carol")
    async with subscribe(alice, "/channel/subscribe/chats/1") as sub:
        assert sub.user_id == "alice"
        reply = await publish(alice, "/channel/publish/chats/1", sub.token, chat("via cookie"))
        assert reply.status_code == 200, reply.text

    refused = await carol.get("/channel/subscribe/chats/1")
    assert (refused.status_code, refused.json()["code"]) == (403, 403)
    anonymous = await client.get(f"{base}/channel/subscribe/chats/1")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, 401)

    # Channels outside chats/{id} keep the inLive default: anyone, signed in or not.
    async with subscribe(carol, "/channel/subscribe/lobby") as signed_in:
        assert signed_in.user_id == "carol"
    async with subscribe(client, f"{base}/channel/subscribe/lobby") as stranger:
        assert len(stranger.user_id) == 36  # a fresh UUID


async def test_non_members_are_403_whatever_token_they_hold(base: str, sign_in: SignIn) -> None:
    """carol's own token, an unrestricted one from another service, and her chats/2 publish
    token are all refused on chats/1; a token minted elsewhere for a member works."""
    carol = await sign_in("carol")
    url = f"{base}/channel/subscribe/chats/1"
    for token in [await negotiate(carol), mint("carol")]:
        reply = await carol.get(url, params={"token": token})
        assert (reply.status_code, reply.json()["code"]) == (403, 403), reply.text

    async with subscribe(carol, f"{base}/channel/subscribe/chats/2") as sub:
        assert sub.user_id == "carol"
        reply = await publish(
            carol, f"{base}/channel/publish/chats/1", sub.token, chat("let me in")
        )
        assert reply.status_code == 403, reply.text

    async with subscribe(carol, f"{url}?token={mint('bob', channels=['chats/{id}'])}") as sub:
        assert sub.user_id == "bob"


async def test_forged_tampered_and_expired_tokens_are_401(base: str, sign_in: SignIn) -> None:
    """A token that does not verify is refused, never taken as anonymous or as the session."""
    alice = await sign_in("alice")  # her session would be let in: the bad token must still lose
    token = await negotiate(alice)
    forged = {
        "tampered signature": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "payload changed to bob": with_claims(token, sub="bob"),
        "other secret": jwt.encode(
            jwt.decode(token, CHANNEL_SECRET, algorithms=["HS256"], audience="channel_asgi"),
            "another-secret-" + "z" * 32,
            algorithm="HS256",
        ),
        "expired": mint("alice", iat=int(time.time()) - 120, exp=int(time.time()) - 60),
        "not a JWT": "hello",
    }
    for kind, bad in forged.items():
        reply = await alice.get("/channel/subscribe/chats/1", params={"token": bad})
        assert (reply.status_code, reply.json()["code"]) == (401, 401), (kind, reply.text)

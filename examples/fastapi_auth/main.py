"""FastAPI with a login, a negotiate route and private rooms ``chats/{id}`` for their members.

Run it from the repository root, then open http://127.0.0.1:8000/ in two browsers (or one normal
and one private window) and sign in as two members of the same room::

    uvicorn examples.fastapi_auth.main:app

The users are alice (password ``wonderland``), bob (``builder``) and carol (``singer``). Room 1 is
alice's and bob's, room 2 is alice's and carol's.

``POST /login`` checks a password and keeps the user in Starlette's signed session cookie.
``GET /negotiate`` (Azure Web PubSub's negotiate) needs that session and answers with an identity
token limited to the user's rooms; the page subscribes with it, and every channel ``chats/{id}``
is open to that room's members only (``members_only``). ``SessionAuth`` is a second way in: a
subscribe that carries the session cookie but no token runs as the session's user.

Set ``SESSION_SECRET`` and ``CHANNEL_SECRET`` to keep sessions and tokens valid across restarts
(and across workers); without them each process generates its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.middleware.sessions import SessionMiddleware

from channel_asgi import ChannelApp
from channel_asgi import Request as ChannelRequest

PAGE: Final = (Path(__file__).parent / "index.html").read_text()
SESSION_SECRET: Final = os.environ.get("SESSION_SECRET") or secrets.token_urlsafe(32)
CHANNEL_SECRET: Final = os.environ.get("CHANNEL_SECRET") or secrets.token_urlsafe(32)


def hash_password(password: str, salt: bytes) -> bytes:
    """Return the PBKDF2 hash of ``password`` (a real app keeps these in its database)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


def new_user(password: str) -> tuple[bytes, bytes]:
    """Return ``(salt, hash)`` for a new user's ``password``."""
    salt = secrets.token_bytes(16)
    return salt, hash_password(password, salt)


USERS: Final = {
    "alice": new_user("wonderland"),
    "bob": new_user("builder"),
    "carol": new_user("singer"),
}
NOBODY: Final = new_user(secrets.token_urlsafe())  # unknown names cost as much as known ones
ROOMS: Final = {"1": {"alice", "bob"}, "2": {"alice", "carol"}}  # room id -> its members


def check_password(username: str, password: str) -> bool:
    """Return whether ``password`` is ``username``'s."""
    salt, stored = USERS.get(username, NOBODY)
    return hmac.compare_digest(hash_password(password, salt), stored) and username in USERS


def rooms_of(user: str) -> list[str]:
    """Return the ids of the rooms ``user`` belongs to."""
    return [room for room, members in ROOMS.items() if user in members]


class SessionAuth:
    """Identify channel users by the host's session (``channel_asgi.Auth``).

    The channels are mounted inside the FastAPI app, so ``SessionMiddleware`` has already put the
    decoded session cookie in ``scope["session"]``.
    """

    async def identify(self, request: ChannelRequest) -> str | None:
        """Return the signed-in user, or None (anonymous)."""
        user = request.scope.get("session", {}).get("user")
        return user if isinstance(user, str) else None


def members_only(user_id: str | None, action: str, params: Mapping[str, str]) -> bool:
    """Allow every action on ``chats/{id}`` to the members of room ``id`` only."""
    return user_id is not None and user_id in ROOMS.get(params["id"], set())


channels = ChannelApp(auth=SessionAuth(), secret=CHANNEL_SECRET)
channels.channel(
    "chats/{id}", authorize=members_only, anonymous_subscribe=False, anonymous_publish=False
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the channels with the server and stop them with it."""
    async with channels:
        yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET, max_age=8 * 3600)
app.mount("/channel", channels)


class Credentials(BaseModel):
    """The body of ``POST /login``."""

    username: str
    password: str


class Negotiated(BaseModel):
    """The reply of ``GET /negotiate``: where the channels are, and a token to use them."""

    token: str
    url: str
    rooms: list[str]


def current_user(request: Request) -> str:
    """Return the signed-in user, or refuse the request with 401."""
    user = request.session.get("user")
    if not isinstance(user, str):
        raise HTTPException(401, "Sign in first: POST /login")
    return user


User = Annotated[str, Depends(current_user)]


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """Serve the chat page."""
    return PAGE


@app.post("/login")
async def login(credentials: Credentials, request: Request) -> dict[str, str]:
    """Check the password and keep the user in the session cookie."""
    if not check_password(credentials.username, credentials.password):
        raise HTTPException(401, "Wrong username or password")
    request.session.clear()
    request.session["user"] = credentials.username
    return {"user": credentials.username}


@app.post("/logout")
async def logout(request: Request) -> dict[str, str]:
    """Forget the session (identity tokens already handed out stay valid until they expire)."""
    request.session.clear()
    return {}


@app.get("/negotiate")
async def negotiate(user: User) -> Negotiated:
    """Hand the signed-in user a short-lived identity token for their rooms' channels."""
    rooms = rooms_of(user)
    token = channels.issue_token(user, channels=[f"chats/{room}" for room in rooms], ttl=600)
    return Negotiated(token=token, url="/channel", rooms=rooms)

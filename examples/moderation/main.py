"""A moderated live chat: viewers chat on ``live``, a moderator deletes messages and bans users.

Run it from the repository root, then open http://127.0.0.1:8000/ in two tabs (two viewers: give
each a name) and http://127.0.0.1:8000/moderator in a third::

    uvicorn examples.moderation.main:app

``GET /`` is the viewers' chat. ``GET /join?name=…`` hands a viewer an identity token for that name,
so that a ban holds across their reconnects (a real app takes the name from its login, as
``examples/fastapi_auth`` does; here anyone may pick any name). ``GET /moderator`` is the
moderator's page: the same chat, a Delete button on each message and a Ban button on each author.
Its buttons call two routes of this host, ``POST /moderation/delete`` and ``POST
/moderation/ban``, which check a shared secret (the ``X-Moderator-Key`` header, ``MODERATOR_KEY``
in the environment, ``let-me-moderate`` when unset) and then call ``channels.delete_message`` and
``channels.ban``. The viewers' pages drop a deleted message, and a banned viewer's page says so.

Set ``CHANNEL_SECRET`` to keep tokens valid across restarts (and, with ``RedisStorage``, across
workers: the moderation calls reach every worker).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from channel_asgi import ChannelApp

HERE: Final = Path(__file__).parent
CHAT_PAGE: Final = (HERE / "chat.html").read_text()
MODERATOR_PAGE: Final = (HERE / "moderator.html").read_text()
CHANNEL: Final = "live"  # the channel both pages use
MODERATOR_KEY: Final = os.environ.get("MODERATOR_KEY") or "let-me-moderate"

channels = ChannelApp(secret=os.environ.get("CHANNEL_SECRET") or secrets.token_urlsafe(32))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the channels with the server and stop them with it."""
    async with channels:
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/channel", channels)


def moderator(x_moderator_key: Annotated[str, Header()] = "") -> None:
    """Refuse the request with 401 unless it carries the moderators' shared secret."""
    if not hmac.compare_digest(x_moderator_key.encode(), MODERATOR_KEY.encode()):
        raise HTTPException(401, "Moderators only: send the X-Moderator-Key header")


Moderator = Annotated[None, Depends(moderator)]


class Deletion(BaseModel):
    """The body of ``POST /moderation/delete``: the event id of the message."""

    id: str = Field(min_length=1, max_length=200)


class Ban(BaseModel):
    """The body of ``POST /moderation/ban``: whom, and for how long (None: until unbanned)."""

    user_id: str = Field(min_length=1, max_length=200)
    seconds: float | None = Field(default=None, gt=0, le=365 * 86400)


@app.get("/", response_class=HTMLResponse)
async def chat() -> str:
    """Serve the viewers' chat page."""
    return CHAT_PAGE


@app.get("/moderator", response_class=HTMLResponse)
async def moderator_page() -> str:
    """Serve the moderator's page (its actions need the key; the page itself holds none)."""
    return MODERATOR_PAGE


@app.get("/join")
async def join(name: Annotated[str, Query(min_length=1, max_length=40)]) -> dict[str, str]:
    """Hand a viewer an identity token for ``name`` on the chat's channel."""
    return {"token": channels.issue_token(name, channels=[CHANNEL], ttl=3600), "user_id": name}


@app.post("/moderation/delete")
async def delete(deletion: Deletion, _: Moderator) -> dict[str, str]:
    """Delete a message: every viewer's page drops it, and the history no longer has it."""
    if not await channels.delete_message(CHANNEL, deletion.id):
        raise HTTPException(404, "No such message (deleted already, or too old)")
    return {"deleted": deletion.id}


@app.post("/moderation/ban")
async def ban(ban: Ban, _: Moderator) -> dict[str, str | float | None]:
    """Ban a viewer from the chat: their page is told, and they can neither watch nor write."""
    await channels.ban(CHANNEL, ban.user_id, seconds=ban.seconds)
    return {"banned": ban.user_id, "seconds": ban.seconds}

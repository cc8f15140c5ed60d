"""``examples/moderation``: a moderated chat, its moderator routes and pages, over real HTTP.

Each test starts the example under uvicorn in a child process (``uvicorn
examples.moderation.main:app``) with a moderator key it knows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
import pytest

from ..helpers import SSEEvent, Subscriber, publish, subscribe

if TYPE_CHECKING:
    from ..conftest import ServerProcess

ROOT: Final = Path(__file__).resolve().parents[2]
KEY: Final = "test-moderator-key"


@pytest.fixture
def base(server_process: Callable[..., ServerProcess]) -> str:
    """Serve the example with uvicorn in a child process; return its base URL."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "MODERATOR_KEY": KEY, "CHANNEL_SECRET": "s" * 40}
    command = ["-m", "uvicorn", "examples.moderation.main:app", "--port", "{port}"]
    return server_process([*command, "--log-level", "warning"], env=env).base


async def join(client: httpx.AsyncClient, base: str, name: str) -> str:
    """Return the identity token ``GET /join`` hands ``name``."""
    reply = await client.get(f"{base}/join", params={"name": name})
    assert reply.status_code == 200, reply.text
    assert reply.json()["user_id"] == name
    return str(reply.json()["token"])


async def moderate(
    client: httpx.AsyncClient, base: str, action: str, body: dict[str, Any], key: str = KEY
) -> httpx.Response:
    return await client.post(
        f"{base}/moderation/{action}", json=body, headers={"X-Moderator-Key": key}
    )


async def until_end(sub: Subscriber) -> SSEEvent:
    """Read the stream to its end event (the test's bounded reads raise if it never comes)."""
    return await sub.stream.until("end")


async def test_the_pages_are_served(base: str, client: httpx.AsyncClient) -> None:
    """The viewers' chat and the moderator's page, each with its script inline."""
    chat = await client.get(f"{base}/")
    assert chat.status_code == 200 and "EventSource" in chat.text and "deleted" in chat.text
    page = await client.get(f"{base}/moderator")
    assert page.status_code == 200 and "/moderation/" in page.text


@pytest.mark.parametrize("key", ["", "wrong"])
@pytest.mark.parametrize(
    ("action", "body"),
    [("delete", {"id": "1-0"}), ("ban", {"user_id": "mallory"})],
    ids=["delete", "ban"],
)
async def test_moderation_routes_need_the_key(
    base: str, client: httpx.AsyncClient, key: str, action: str, body: dict[str, Any]
) -> None:
    """Without the shared secret a moderation route is 401 and changes nothing."""
    reply = await moderate(client, base, action, body, key=key)
    assert reply.status_code == 401
    async with subscribe(
        client, f"{base}/channel/subscribe/live?token={await join(client, base, 'mallory')}"
    ):
        pass


async def test_a_moderator_deletes_a_message_and_bans_its_author(
    base: str, client: httpx.AsyncClient
) -> None:
    """Delete: alice's stream is told and the history drops it. Ban: mallory's stream ends."""
    alice_token = await join(client, base, "alice")
    mallory_token = await join(client, base, "mallory")
    async with (
        subscribe(client, f"{base}/channel/subscribe/live?token={alice_token}") as alice,
        subscribe(client, f"{base}/channel/subscribe/live?token={mallory_token}") as mallory,
    ):
        url = f"{base}/channel/publish/live"
        spam = await publish(
            client, url, mallory.token, {"type": "broadcast", "message": {"text": "spam"}}
        )
        assert spam.status_code == 200
        spam_id = spam.json()["id"]
        assert (await alice.stream.until("broadcast")).id == spam_id

        reply = await moderate(client, base, "delete", {"id": spam_id})
        assert (reply.status_code, reply.json()) == (200, {"deleted": spam_id})
        deleted = await alice.stream.until("system")
        while deleted.json["message"]["status"] != "deleted":  # mallory's join came first
            deleted = await alice.stream.until("system")
        assert deleted.json["message"] == {"status": "deleted", "id": spam_id}
        assert (await moderate(client, base, "delete", {"id": spam_id})).status_code == 404

        reply = await moderate(client, base, "ban", {"user_id": "mallory", "seconds": 600})
        assert (reply.status_code, reply.json()) == (
            200,
            {"banned": "mallory", "seconds": 600.0},
        )
        assert (await until_end(mallory)).json["message"] == {"status": "banned"}
        again = await publish(
            client, url, mallory.token, {"type": "broadcast", "message": {"text": "x"}}
        )
        assert again.status_code == 403

        await publish(client, url, alice.token, {"type": "request"})
        assert (await alice.stream.until("request")).json["message"] == []
    refused = await client.get(f"{base}/channel/subscribe/live?token={mallory_token}")
    assert refused.status_code == 403

"""Storage-level errors become the app's refusals in one place: 503 (Retry-After), 504 and 404."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import websockets

import channel_asgi
from channel_asgi import ChannelApp, StorageTimeout, StorageUnavailable
from channel_asgi.errors import ChannelClosed, ChannelError, NotFound, http_error
from channel_asgi.storage import (
    MemoryStorage,
    StorageChannelClosed,
    StorageError,
    StorageNoReply,
    StorageUnreachable,
)

from .helpers import WAIT, publish, subscribe

SECRET = "e" * 40


class FailingStorage(MemoryStorage):
    """A MemoryStorage whose appends, joins and presence reads fail, once ``failure`` is set."""

    failure: StorageError | None = None

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def append(
        self,
        channel: str,
        payload: bytes,
        *,
        keep: int,
        ttl: float | None = None,
        archive: int = 0,
        timestamp: float | None = None,
        author: str | None = None,
    ) -> str:
        self._fail()
        return await super().append(
            channel,
            payload,
            keep=keep,
            ttl=ttl,
            archive=archive,
            timestamp=timestamp,
            author=author,
        )

    async def join(self, channel: str, connection_id: str, user_id: str | None = None) -> int:
        self._fail()
        return await super().join(channel, connection_id, user_id)

    async def viewer_count(self, channel: str) -> int:
        self._fail()
        return await super().viewer_count(channel)

    async def presence(self, channel: str) -> dict[str, int]:
        self._fail()
        return await super().presence(channel)


# The storage error (its class and argument: each test makes its own, since a raised one holds
# its traceback), the refusal it becomes, and the refusal's status and message.
REFUSALS = [
    pytest.param(StorageUnreachable, "down", StorageUnavailable, 503, "down", id="unreachable"),
    pytest.param(StorageNoReply, "no reply", StorageTimeout, 504, "no reply", id="no-reply"),
    pytest.param(
        StorageChannelClosed, "c", ChannelClosed, 404, "Channel 'c' is closed", id="closed"
    ),
    pytest.param(StorageError, "odd", StorageUnavailable, 503, "odd", id="other"),
]
FIELDS = ("kind", "argument", "refusal", "status", "message")


@pytest.mark.parametrize(FIELDS, REFUSALS)
def test_http_error_maps_each_storage_error_to_its_refusal(
    kind: type[StorageError], argument: str, refusal: type[ChannelError], status: int, message: str
) -> None:
    """The storage's message is kept; the class gives the status."""
    mapped = http_error(kind(argument))
    assert type(mapped) is refusal
    assert (mapped.status, mapped.message) == (status, message)


def test_a_refusal_is_its_own_http_error() -> None:
    """A ChannelError (a backend raising the public classes itself) passes unchanged."""
    for refusal in (StorageUnavailable("x"), StorageTimeout("y"), ChannelClosed("c"), NotFound()):
        assert http_error(refusal) is refusal


def test_the_public_refusals_are_also_their_storage_level_errors() -> None:
    """``except StorageUnreachable`` catches an outage from a storage call and from the API."""
    assert issubclass(channel_asgi.StorageUnavailable, StorageUnreachable)
    assert issubclass(channel_asgi.StorageTimeout, StorageNoReply)
    assert issubclass(ChannelClosed, StorageChannelClosed)
    assert ChannelClosed("c").channel == "c"
    assert not issubclass(StorageTimeout, StorageUnreachable)  # "may have been applied"


@pytest.mark.parametrize(FIELDS, REFUSALS)
async def test_the_server_side_api_raises_the_public_refusals(
    kind: type[StorageError], argument: str, refusal: type[ChannelError], status: int, message: str
) -> None:
    """``except channel_asgi.StorageUnavailable`` around ``channels.publish`` still catches."""
    failure = kind(argument)
    storage = FailingStorage()
    async with ChannelApp(storage=storage, secret=SECRET) as channels:
        storage.failure = failure
        with pytest.raises(refusal) as raised:
            await channels.publish("room", {"text": "hi"})
        assert (raised.value.status, raised.value.message) == (status, message)
        assert raised.value.__cause__ is failure
        with pytest.raises(refusal):
            await channels.viewer_count("room")
        with pytest.raises(refusal):
            await channels.presence("room")


async def test_an_outage_is_caught_as_storage_unavailable_around_publish() -> None:
    """The server-side API's documented way to handle an outage keeps working."""
    storage = FailingStorage()
    async with ChannelApp(storage=storage, secret=SECRET) as channels:
        storage.failure = StorageUnreachable("Redis is unavailable (append): refused")
        try:
            await channels.publish("room", "hello")
        except channel_asgi.StorageUnavailable as exc:
            assert exc.code == 503
        else:
            pytest.fail("the outage was not raised")


@pytest.mark.parametrize(FIELDS, REFUSALS)
async def test_http_replies_keep_their_status_message_and_headers(
    serve,
    client: httpx.AsyncClient,
    kind: type[StorageError],
    argument: str,
    refusal: type[ChannelError],
    status: int,
    message: str,
) -> None:
    """A storage failure on publish and on subscribe is the JSON refusal of its class."""
    storage = FailingStorage()
    base = await serve(ChannelApp(storage=storage, secret=SECRET))
    async with subscribe(client, f"{base}/subscribe/room") as sub:
        storage.failure = kind(argument)
        body = {"type": "broadcast", "message": 1}
        reply = await publish(client, f"{base}/publish/room", sub.token, body)
        refused = await client.get(f"{base}/subscribe/room", timeout=WAIT)
    for answer in (reply, refused):
        assert answer.status_code == status
        assert answer.json() == {"code": status, "message": message}
        assert answer.headers.get("retry-after") == ("1" if status == 503 else None)


async def test_a_websocket_frame_gets_the_refusal_of_a_storage_failure(serve) -> None:
    """A WebSocket publish answered by an outage is an error frame with the 503."""
    storage = FailingStorage()
    base = await serve(ChannelApp(storage=storage, secret=SECRET))
    url = "ws" + base[len("http") :] + "/ws/room"
    async with websockets.connect(url, open_timeout=WAIT) as ws:
        with anyio.fail_after(WAIT):
            assert json.loads(await ws.recv())["type"] == "init"
            storage.failure = StorageUnreachable("down")
            await ws.send(json.dumps({"type": "broadcast", "message": 1, "ref": 7}))
            reply = json.loads(await ws.recv())
    assert reply == {"type": "error", "code": 503, "message": "down", "ref": 7}

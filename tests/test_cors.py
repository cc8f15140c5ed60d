"""CORS on both routes: preflights, allowed and refused origins, and refusals that keep CORS."""

from __future__ import annotations

import httpx
import pytest

from channel_asgi import ChannelApp

from .helpers import subscribe

PAGE = "https://fiddle.example"


def preflight(method: str, origin: str = PAGE) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type",
    }


@pytest.mark.parametrize(("route", "method"), [("subscribe", "GET"), ("publish", "POST")])
async def test_preflight_from_an_allowed_origin_is_204_with_cors_headers(
    serve, client: httpx.AsyncClient, route: str, method: str
) -> None:
    """Both routes answer an allowed preflight with the origin, methods and headers."""
    base = await serve(ChannelApp(cors_origins=[PAGE]))
    reply = await client.options(f"{base}/{route}/1", headers=preflight(method))
    assert reply.status_code == 204
    assert reply.headers["access-control-allow-origin"] == PAGE
    assert method in reply.headers["access-control-allow-methods"]
    assert "content-type" in reply.headers["access-control-allow-headers"]
    assert reply.headers["vary"] == "Origin"


async def test_preflight_from_another_origin_is_403_without_allow_origin(
    serve, client: httpx.AsyncClient
) -> None:
    """A refused preflight is a JSON 403 and grants nothing."""
    base = await serve(ChannelApp(cors_origins=[PAGE]))
    reply = await client.options(
        f"{base}/publish/1", headers=preflight("POST", "https://evil.example")
    )
    assert reply.status_code == 403
    assert reply.json()["code"] == 403
    assert "access-control-allow-origin" not in reply.headers


async def test_no_origins_configured_refuses_every_preflight(
    serve, client: httpx.AsyncClient
) -> None:
    """The default allows no cross-origin page."""
    base = await serve(ChannelApp())
    reply = await client.options(f"{base}/subscribe/1", headers=preflight("GET"))
    assert reply.status_code == 403


async def test_wildcard_allows_any_origin_without_credentials(
    serve, client: httpx.AsyncClient
) -> None:
    """["*"] answers with '*' and no credentials."""
    base = await serve(ChannelApp(cors_origins=["*"]))
    reply = await client.options(
        f"{base}/publish/1", headers=preflight("POST", "https://any.example")
    )
    assert reply.status_code == 204
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in reply.headers


async def test_stream_and_publish_replies_carry_cors_for_allowed_origins(
    serve, client: httpx.AsyncClient
) -> None:
    """The SSE response and the publish reply both carry Access-Control-Allow-Origin."""
    base = await serve(ChannelApp(cors_origins=[PAGE]))
    headers = {"origin": PAGE}
    async with subscribe(client, f"{base}/subscribe/1", headers=headers) as sub:
        assert sub.stream.response.headers["access-control-allow-origin"] == PAGE
        reply = await client.post(
            f"{base}/publish/1",
            params={"token": sub.token},
            json={"type": "broadcast", "message": 1},
            headers=headers,
        )
        assert reply.headers["access-control-allow-origin"] == PAGE


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/subscribe/bad%20name", 400),
        ("POST", "/publish/1", 401),
        ("PUT", "/publish/1", 405),
        ("GET", "/nope", 404),
    ],
)
async def test_refusals_carry_cors_headers_for_allowed_origins(
    serve, client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    """A page can read why it was refused."""
    base = await serve(ChannelApp(cors_origins=[PAGE]))
    reply = await client.request(
        method, base + path, headers={"origin": PAGE, "content-type": "application/json"}
    )
    assert reply.status_code == status
    assert reply.headers["access-control-allow-origin"] == PAGE


async def test_plain_request_from_a_disallowed_origin_is_served_without_cors(
    serve, client: httpx.AsyncClient
) -> None:
    """The server answers; the browser is the one that blocks it."""
    base = await serve(ChannelApp(cors_origins=[PAGE]))
    reply = await client.post(f"{base}/publish/1", headers={"origin": "https://evil.example"})
    assert reply.status_code == 415
    assert "access-control-allow-origin" not in reply.headers


async def test_options_without_preflight_headers_lists_the_methods(
    serve, client: httpx.AsyncClient
) -> None:
    """A bare OPTIONS is answered with Allow."""
    base = await serve(ChannelApp())
    reply = await client.options(f"{base}/publish/1")
    assert reply.status_code == 204
    assert reply.headers["allow"] == "POST, OPTIONS"

"""The CLI: ``channel-asgi serve | demo`` and ``python -m channel_asgi``, run as child processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import httpx
import pytest

from .helpers import WAIT, eventually_blocking, free_port, listening, publish, subscribe

if TYPE_CHECKING:
    from .conftest import ServerProcess

StartServer = Callable[..., "ServerProcess"]

CONSOLE_SCRIPT: Final = str(Path(sys.executable).parent / "channel-asgi")
MODULE: Final = [sys.executable, "-m", "channel_asgi"]
SECRET: Final = "cli-test-secret-" + "0123456789abcdef" * 2
KEYS: Final = ("6b9f652a-key-one", "6b9f652a-key-two")
ORIGINS: Final = ("https://a.example", "https://b.example:8443")


def _clean_env() -> dict[str, str]:
    """The environment without CLI options a parent may have left behind."""
    return {k: v for k, v in os.environ.items() if k != "CHANNEL_ASGI_CLI_OPTIONS"}


@contextmanager
def _running(command: list[str], host: str = "127.0.0.1") -> Iterator[str]:
    """Run a server command (``{port}`` substituted) until it listens; stop it by PID afterwards."""
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [arg.format(port=port) for arg in command],
        env=_clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            eventually_blocking(lambda: listening(process, port, host))
        except RuntimeError:
            log.seek(0)
            raise RuntimeError(f"exited with {process.returncode}: {log.read().decode()}") from None
        yield f"http://{host}:{port}"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=WAIT)
        log.close()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a CLI command to completion (a server that starts by mistake is killed at WAIT)."""
    return subprocess.run(
        args, env=_clean_env(), capture_output=True, text=True, timeout=WAIT, check=False
    )


def _serve_args(*extra: str) -> list[str]:
    return ["-m", "channel_asgi", "serve", "--port", "{port}", "--log-level", "warning", *extra]


def _configured_serve() -> list[str]:
    args = ["--secret", SECRET, "--host", "127.0.0.1"]
    for key in KEYS:
        args += ["--widget-key", key]
    for origin in ORIGINS:
        args += ["--cors-origin", origin]
    return _serve_args(*args)


async def test_serve_accepts_every_repeated_widget_key_and_refuses_others(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``--widget-key`` twice: a publish with either key is 200, with another key 403."""
    base = server_process(_configured_serve()).base
    async with subscribe(client, f"{base}/subscribe/keys") as sub:
        url = f"{base}/publish/keys"
        for key in KEYS:
            body = {"type": "broadcast", "message": key, "widget_key": key}
            reply = await publish(client, url, sub.token, body)
            assert reply.status_code == 200, reply.text
            assert (await sub.stream.until("broadcast")).json["message"] == key
        body = {"type": "broadcast", "message": "x", "widget_key": "6b9f652a-unknown"}
        reply = await publish(client, url, sub.token, body)
        assert reply.status_code == 403, reply.text
        assert reply.json()["code"] == 403
        missing = await publish(client, url, sub.token, {"type": "broadcast", "message": "x"})
        assert missing.status_code == 403, missing.text


async def test_serve_allows_preflight_from_each_repeated_cors_origin_only(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``--cors-origin`` twice: a preflight from either origin is 204, from another 403."""
    base = server_process(_configured_serve()).base
    for route in ("publish", "subscribe"):
        method = "POST" if route == "publish" else "GET"
        for origin in ORIGINS:
            reply = await client.options(
                f"{base}/{route}/cors",
                headers={"origin": origin, "access-control-request-method": method},
            )
            assert reply.status_code == 204, (route, origin, reply.text)
            assert reply.headers["access-control-allow-origin"] == origin
        reply = await client.options(
            f"{base}/{route}/cors",
            headers={"origin": "https://evil.example", "access-control-request-method": method},
        )
        assert reply.status_code == 403, reply.text
        assert reply.json()["code"] == 403
        assert "access-control-allow-origin" not in reply.headers


async def test_serve_signs_tokens_with_the_given_secret(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``--secret``: a token issued by one server verifies on another with the same secret only."""
    first = server_process(_serve_args("--secret", SECRET)).base
    same = server_process(_serve_args("--secret", SECRET)).base
    other = server_process(_serve_args("--secret", SECRET[::-1])).base
    async with subscribe(client, f"{first}/subscribe/secret") as sub:
        body = {"type": "broadcast", "message": "signed"}
        reply = await publish(client, f"{same}/publish/secret", sub.token, body)
        assert reply.status_code == 200, reply.text
        reply = await publish(client, f"{other}/publish/secret", sub.token, body)
        assert reply.status_code == 401, reply.text


async def test_serve_binds_the_given_host(client: httpx.AsyncClient) -> None:
    """``--host 127.0.0.2`` serves on that address and not on 127.0.0.1."""
    command = [
        *MODULE,
        "serve",
        "--host",
        "127.0.0.2",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]
    with _running(command, host="127.0.0.2") as base:
        async with subscribe(client, f"{base}/subscribe/host") as sub:
            assert sub.init["message"]["viewer_count"] == 1
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            pass


async def test_console_script_serves_the_channel_routes(client: httpx.AsyncClient) -> None:
    """The installed ``channel-asgi serve`` runs a server that subscribes and publishes."""
    command = [CONSOLE_SCRIPT, "serve", "--host", "127.0.0.1", "--port", "{port}"]
    with _running([*command, "--log-level", "warning", "--secret", SECRET]) as base:
        async with subscribe(client, f"{base}/subscribe/script") as sub:
            body = {"type": "broadcast", "message": {"from": "script"}}
            reply = await publish(client, f"{base}/publish/script", sub.token, body)
            assert reply.status_code == 200, reply.text
            event = await sub.stream.until("broadcast")
            assert event.json["message"] == {"from": "script"}


async def test_demo_serves_the_chat_page_and_its_script(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``demo`` serves the seed's chat page at / and its JavaScript at /script.js."""
    base = server_process(["-m", "channel_asgi", "demo", "--port", "{port}"]).base
    page = await client.get(f"{base}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for element in ("username", "message", "form", "list"):
        assert re.search(rf'id="{element}"', page.text), element
    assert re.search(r'<script[^>]*src="/script\.js"', page.text)
    script = await client.get(f"{base}/script.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    for code in (
        "new EventSource(subscribeUrl)",
        "/subscribe/${streamId}",
        "/publish/${streamId}?token=${token}",
        "type: 'broadcast'",
        "type: 'request'",
        "widget_key: widgetKey",
        "data.type === 'init'",
    ):
        assert code in script.text, code


async def test_demo_serves_the_channel_routes_at_the_root_with_open_cors(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``demo``: /subscribe/15 gives init, the seed's publish is 200 and arrives, CORS is "*"."""
    base = server_process(["-m", "channel_asgi", "demo", "--port", "{port}"]).base
    origin = {"origin": "https://jsfiddle.net"}
    async with subscribe(client, f"{base}/subscribe/15", headers=origin) as sub:
        assert sub.stream.response.headers["access-control-allow-origin"] == "*"
        body = {
            "message": {"username": "ann", "type": "chat", "message_text": "hello"},
            "widget_key": "<YOUR_WIDGET_KEY>",
            "type": "broadcast",
        }
        reply = await client.post(
            f"{base}/publish/15", params={"token": sub.token}, json=body, headers=origin
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["code"] == 200
        assert reply.headers["access-control-allow-origin"] == "*"
        event = await sub.stream.until("broadcast")
        assert event.json["message"] == body["message"]
    preflight = await client.options(
        f"{base}/publish/15",
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("launcher", [MODULE, [CONSOLE_SCRIPT]], ids=["module", "console-script"])
def test_help_prints_usage_naming_serve_and_demo(launcher: list[str]) -> None:
    """``--help`` prints usage that names both commands and exits 0."""
    result = _run([*launcher, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "serve" in result.stdout
    assert "demo" in result.stdout


def test_serve_help_lists_every_option() -> None:
    """``serve --help`` documents host, port, redis, secret, widget keys, CORS origins, workers."""
    result = _run([*MODULE, "serve", "--help"])
    assert result.returncode == 0, result.stderr
    for option in (
        "--host",
        "--port",
        "--redis",
        "--secret",
        "--widget-key",
        "--cors-origin",
        "--workers",
        "--metrics",
    ):
        assert option in result.stdout, option


async def test_serve_metrics_serves_prometheus_text_and_logs_refusals(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """``--metrics`` serves ``/metrics``; the log shows a refused publish as one INFO line."""
    server = server_process(_serve_args("--metrics", "--log-level", "info"))
    reply = await publish(client, f"{server.base}/publish/c", "forged", {"message": 1})
    assert reply.status_code == 401
    scraped = await client.get(f"{server.base}/metrics")
    assert scraped.status_code == 200
    assert 'channel_asgi_publishes_total{code="401",type="unknown"} 1.0' in scraped.text
    assert (await client.get(f"{server.base}/health")).json() == {"code": 200, "message": "ok"}
    line = eventually_blocking(
        lambda: next((x for x in server.output().splitlines() if "POST /publish/c" in x), None)
    )
    assert line.startswith("INFO:") and "from 127.0.0.1: 401 " in line


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        pytest.param(["--workers", "2"], "--redis", id="workers-without-redis"),
        pytest.param(
            ["--redis", "redis://127.0.0.1:6379/15"], "--secret", id="redis-without-secret"
        ),
        pytest.param(
            [
                *("--redis", "redis://127.0.0.1:6379/15", "--secret", SECRET),
                *("--max-history-bytes", "1000000"),
            ],
            "maxmemory",
            id="max-history-bytes-with-redis",
        ),
        pytest.param(["--max-history-bytes", "0"], "at least 1", id="max-history-bytes-zero"),
        pytest.param(
            ["--max-connections-per-ip", "-1"],
            "--max-connections-per-ip",
            id="negative-connection-limit",
        ),
    ],
)
def test_serve_refuses_inconsistent_options_with_status_2(args: list[str], mentions: str) -> None:
    """Options that cannot work together exit 2 with a message, before any server starts."""
    result = _run([*MODULE, "serve", "--port", str(free_port()), *args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert mentions in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, 256 * 2**20, id="default"),
        pytest.param({"max_history_bytes": 1_000_000}, 1_000_000, id="given"),
    ],
)
def test_serve_max_history_bytes_bounds_the_memory_storage(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, int], expected: int
) -> None:
    """``--max-history-bytes`` reaches ``MemoryStorage(max_history_bytes=...)``."""
    from channel_asgi import ChannelApp, cli
    from channel_asgi.storage import MemoryStorage

    monkeypatch.setenv("CHANNEL_ASGI_CLI_OPTIONS", json.dumps(options))
    app = cli.create_app()
    assert isinstance(app, ChannelApp) and isinstance(app.storage, MemoryStorage)
    assert app.storage.max_history_bytes == expected

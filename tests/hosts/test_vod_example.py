"""``examples/vod_replay``: the recorded-stream page and the chat it replays from ``/history``.

The example runs the way its docstring says (``uvicorn examples.vod_replay.main:app``), in a
child process, with and without a video file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

from ..helpers import publish, subscribe

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..conftest import ServerProcess

ROOT: Final = Path(__file__).resolve().parents[2]
SAMPLE_TEXTS: Final = ["what a goal", "no way", "replay it!"]  # 120.4 s, 120.4 s and 131 s


def start_example(server_process: Callable[..., ServerProcess], **env: str) -> str:
    """Serve the example with uvicorn in a child process; return its base URL."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = ["-m", "uvicorn", "examples.vod_replay.main:app", "--port", "{port}"]
    started = server_process([*command, "--log-level", "warning"], env={"PYTHONPATH": path, **env})
    return started.base


async def read_all(client: httpx.AsyncClient, url: str, **params: Any) -> list[dict[str, Any]]:
    """Every event of a range of ``GET /history``, following ``next``."""
    events: list[dict[str, Any]] = []
    while True:
        reply = await client.get(url, params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        events += body["events"]
        if body["next"] is None:
            return events
        params["after"] = body["next"]


async def test_the_page_and_its_chat_replayed_page_by_page(
    server_process: Callable[..., ServerProcess], client: httpx.AsyncClient
) -> None:
    """The page is a scrubber (no video file); the chat comes from /history, by media time."""
    base = start_example(server_process, VOD_VIDEO="")
    page = await client.get(f"{base}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="range"' in page.text and '"video": null' in page.text
    assert "__VOD_CONFIG__" not in page.text
    script = await client.get(f"{base}/script.js")
    assert "/history/" in script.text and "EventSource" in script.text
    assert (await client.get(f"{base}/video")).status_code == 404

    history = f"{base}/channel/history/vod/demo"
    everything = await read_all(client, history, limit=50)
    assert len(everything) == 215  # the sample and the crowd, every page followed
    stamps = [event["timestamp"] for event in everything]
    assert stamps == sorted(stamps) and 0 < stamps[0] and stamps[-1] <= 600
    window = await read_all(client, history, **{"from": 120, "to": 132, "limit": 2})
    texts = [event["message"]["text"] for event in window]
    assert [text for text in texts if text in SAMPLE_TEXTS] == SAMPLE_TEXTS

    async with subscribe(client, f"{base}/channel/subscribe/vod/demo") as viewer:
        body = {"type": "broadcast", "message": {"name": "eve", "text": "late"}, "timestamp": 121.5}
        reply = await publish(client, f"{base}/channel/publish/vod/demo", viewer.token, body)
        assert reply.status_code == 200, reply.text
    posted = await read_all(client, history, **{"from": 121.5, "to": 121.6})
    assert [event["message"]["text"] for event in posted] == ["late"]


async def test_the_page_plays_the_video_file_it_was_given(
    server_process: Callable[..., ServerProcess], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """With ``VOD_VIDEO`` the page has a video, served with ranges (so a player can seek)."""
    recording = tmp_path / "recording.mp4"
    recording.write_bytes(bytes(range(256)) * 64)
    base = start_example(server_process, VOD_VIDEO=str(recording))
    assert '"video": "/video"' in (await client.get(f"{base}/")).text
    whole = await client.get(f"{base}/video")
    assert (whole.status_code, whole.content) == (200, recording.read_bytes())
    part = await client.get(f"{base}/video", headers={"range": "bytes=256-511"})
    assert (part.status_code, part.content) == (206, bytes(range(256)))

"""Subscribe, publish and read the history with channel_asgi's Python client.

It starts no server: run one, then point this at it (from the repository root)::

    .venv/bin/channel-asgi serve --port 8000
    .venv/bin/python examples/python_client.py                  # over Server-Sent Events
    .venv/bin/python examples/python_client.py --ws             # over one WebSocket
    .venv/bin/python examples/python_client.py https://example.com/channel --channel 15

Run it twice at once to see the other one's join and messages.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Literal

import anyio

from channel_asgi.client import ChannelError, Client, Subscription


async def talk(sub: Subscription, *, transport: str, events: int, wait: float) -> None:
    """Publish once, print the history, then the next ``events`` events (for ``wait`` s at most)."""
    event_id = await sub.publish({"text": f"hello over {transport}"})
    print(f"published {event_id}")

    history = await sub.request()  # the retained broadcasts, oldest first
    print(f"history: {len(history)} retained, oldest first (the last 5 shown)")
    for event in history[-5:]:
        print(f"  {event.id} {event.author_id}: {event.message}")

    print(f"the next {events} events (for at most {wait} s):")
    with anyio.move_on_after(wait):
        async for event in sub:  # our own broadcast comes first
            where = f" {event.id}" if event.id else ""
            print(f"  {event.type}{where} {event.author_id}: {event.message}")
            events -= 1
            if events == 0:
                break


def refused(exc: ChannelError) -> int:
    """Report a refusal (``exc.code`` is an HTTP status); return the exit status."""
    print(f"error {exc.code}: {exc.message}", file=sys.stderr)
    return 1


async def run(
    base_url: str,
    channel: str,
    *,
    transport: Literal["sse", "ws"],
    widget_key: str | None,
    events: int,
    wait: float,
) -> int:
    """Subscribe to ``channel`` on the server at ``base_url`` and talk; return the exit status."""
    try:
        async with (
            Client(base_url, transport=transport, widget_key=widget_key) as client,
            client.subscribe(channel) as sub,
        ):
            print(f"subscribed to {channel!r} over {transport} as {sub.user_id}")
            try:
                await talk(sub, transport=transport, events=events, wait=wait)
            except ChannelError as exc:  # a publish, the request or a reconnect was refused
                return refused(exc)
    except ChannelError as exc:  # the subscribe was refused, or no server answered
        return refused(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; return the exit status."""
    parser = argparse.ArgumentParser(description="Try channel_asgi's Python client on a server.")
    parser.add_argument(
        "base_url",
        nargs="?",
        default="http://127.0.0.1:8000",
        help="where the channel routes are, mount prefix included (http://127.0.0.1:8000)",
    )
    parser.add_argument("--channel", default="15", help="the channel (15)")
    parser.add_argument("--ws", action="store_true", help="use the WebSocket route, not SSE")
    parser.add_argument("--widget-key", help="sent with every publish, if the server needs one")
    parser.add_argument("--events", type=int, default=3, help="events to print (3)")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for them (10)")
    args = parser.parse_args(argv)
    transport: Literal["sse", "ws"] = "ws" if args.ws else "sse"
    return anyio.run(
        functools.partial(
            run,
            args.base_url,
            args.channel,
            transport=transport,
            widget_key=args.widget_key,
            events=args.events,
            wait=args.wait,
        )
    )


if __name__ == "__main__":
    sys.exit(main())

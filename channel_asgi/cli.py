"""``channel-asgi serve | demo``: run channel_asgi standalone on uvicorn.

The options travel to the app factory in an environment variable, so that ``--workers N`` (which
starts N processes, each importing the factory) gives every worker the same configuration.
``--metrics`` with several workers also needs prometheus_client's multi-process mode: the
command makes a fresh directory for it, names it in ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start (they inherit it), and removes it when the server stops.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Final

from .app import ChannelApp

__all__ = ["create_app", "main"]

_ENV: Final = "CHANNEL_ASGI_CLI_OPTIONS"
_MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def create_app() -> Any:
    """Build the app the CLI serves from the options in ``CHANNEL_ASGI_CLI_OPTIONS``."""
    options: dict[str, Any] = json.loads(os.environ.get(_ENV, "{}"))
    demo = options.pop("demo", False)
    redis_url = options.pop("redis", None)
    max_history_bytes = options.pop("max_history_bytes", None)
    redis_options = {
        "prefix": options.pop("redis_prefix", "channel_asgi"),
        "presence_ttl": options.pop("presence_ttl", 30.0),
    }
    if redis_url:
        from .storage.redis import RedisStorage

        options["storage"] = RedisStorage(redis_url, **redis_options)
    elif max_history_bytes is not None:
        from .storage.memory import MemoryStorage

        options["storage"] = MemoryStorage(max_history_bytes=max_history_bytes)
    if options.get("widget_keys") == []:
        options["widget_keys"] = None
    channels = ChannelApp(**options)
    if demo:
        from .demo import DemoApp

        return DemoApp(channels)
    return channels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channel-asgi",
        description="Real-time channels over Server-Sent Events (inLive Real-Time Widget API).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the channel routes at /")
    demo = commands.add_parser("demo", help="serve the live chat demo and the channel routes")
    for command, port in ((serve, 8000), (demo, 8000)):
        command.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
        command.add_argument("--port", type=int, default=port, help=f"port to bind ({port})")
        command.add_argument("--log-level", default="info", help="uvicorn log level (info)")
        command.add_argument(
            "--widget-key",
            action="append",
            default=[],
            dest="widget_keys",
            help="accept this widget key (repeat for several); publishes must carry one",
        )
        command.add_argument(
            "--cors-origin",
            action="append",
            default=[],
            dest="cors_origins",
            help="allow browser pages from this origin, or '*' (repeat for several; demo: '*')",
        )
    serve.add_argument("--redis", metavar="URL", help="use RedisStorage at URL (many workers)")
    serve.add_argument(
        "--redis-prefix", default="channel_asgi", help="prefix of the Redis keys (channel_asgi)"
    )
    serve.add_argument(
        "--presence-ttl",
        type=float,
        default=30.0,
        help="seconds before a dead worker's viewers stop counting (30)",
    )
    serve.add_argument("--secret", help="HMAC secret for tokens (required with --redis)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs --redis)")
    serve.add_argument("--history-size", type=int, default=1000, help="broadcasts kept per channel")
    serve.add_argument(
        "--archive-size",
        type=int,
        default=0,
        help="broadcasts archived per channel by media time, for chat replay (0: none)",
    )
    serve.add_argument(
        "--max-history-bytes",
        type=int,
        help="memory storage: bytes of history all channels may keep (268435456, 256 MiB)",
    )
    serve.add_argument("--heartbeat", type=float, default=15.0, help="seconds between pings")
    serve.add_argument(
        "--system-events-max-viewers",
        type=int,
        default=1000,
        help="above this many viewers, join/leave become one count event per interval (1000)",
    )
    serve.add_argument(
        "--presence-interval",
        type=float,
        default=1.0,
        help="seconds between count events on large channels (1.0)",
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=256,
        help="open subscriber connections one client address may hold, per worker; 0: no limit "
        "(256)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds a publish body may take to arrive (10.0)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at /metrics (every worker's; needs the metrics extra)",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="do not log every request (faster)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    args = _parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print('The CLI needs uvicorn: pip install "channel-asgi[server]"', file=sys.stderr)
        return 2
    workers = 1
    if args.command == "demo":
        options: dict[str, Any] = {
            "demo": True,
            "widget_keys": args.widget_keys,
            "cors_origins": args.cors_origins or ["*"],
        }
    else:
        options = {
            "redis": args.redis,
            "redis_prefix": args.redis_prefix,
            "presence_ttl": args.presence_ttl,
            "secret": args.secret,
            "widget_keys": args.widget_keys,
            "cors_origins": args.cors_origins,
            "history_size": args.history_size,
            "archive_size": args.archive_size,
            "max_history_bytes": args.max_history_bytes,
            "heartbeat": args.heartbeat,
            "system_events_max_viewers": args.system_events_max_viewers,
            "presence_interval": args.presence_interval,
            "max_connections_per_ip": args.max_connections_per_ip or None,
            "body_timeout": args.body_timeout,
            "metrics": args.metrics,
        }
        workers = args.workers
        if args.max_connections_per_ip < 0:
            print("--max-connections-per-ip must be at least 0 (0: no limit)", file=sys.stderr)
            return 2
        if workers < 1:
            print("--workers must be at least 1", file=sys.stderr)
            return 2
        if workers > 1 and not args.redis:
            print("--workers above 1 needs --redis: memory storage is one process", file=sys.stderr)
            return 2
        if args.redis and args.max_history_bytes is not None:
            print(
                "--max-history-bytes is for the memory storage; bound Redis with its maxmemory",
                file=sys.stderr,
            )
            return 2
        if args.max_history_bytes is not None and args.max_history_bytes < 1:
            print("--max-history-bytes must be at least 1", file=sys.stderr)
            return 2
        if args.redis and not args.secret:
            print(
                "--redis needs --secret: every worker must verify the others' tokens",
                file=sys.stderr,
            )
            return 2
        # Looked up, not imported: its multi-process mode is chosen when it is first imported.
        if args.metrics and importlib.util.find_spec("prometheus_client") is None:
            print(
                '--metrics needs prometheus_client: pip install "channel-asgi[metrics]"',
                file=sys.stderr,
            )
            return 2
    os.environ[_ENV] = json.dumps(options)
    if args.command == "demo":
        print(f"Live chat demo: http://{args.host}:{args.port}/", file=sys.stderr)
    with _multiprocess_metrics(options.get("metrics", False) and workers > 1):
        uvicorn.run(
            "channel_asgi.cli:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=workers,
            log_level=args.log_level,
            log_config=_log_config(args.log_level),
            access_log=not getattr(args, "no_access_log", False),
            timeout_graceful_shutdown=5,
        )
    return 0


@contextlib.contextmanager
def _multiprocess_metrics(needed: bool) -> Iterator[None]:
    """Give the workers a fresh prometheus_client multi-process directory, and remove it after.

    A directory the environment already names is used as it is (and left in place): whoever
    set it owns it.
    """
    if not needed or os.environ.get(_MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="channel-asgi-metrics-")
    os.environ[_MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        del os.environ[_MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration, with channel_asgi's loggers on its console handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["channel_asgi"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config

"""channel_asgi as a module-level app, for the servers that take no factory (daphne).

Built from the CLI's options in ``CHANNEL_ASGI_CLI_OPTIONS``, as ``channel-asgi serve`` builds it;
``benchmarks/run.py`` serves it on each server for the "Servers" rows.
"""

from __future__ import annotations

from channel_asgi.cli import create_app

app = create_app()

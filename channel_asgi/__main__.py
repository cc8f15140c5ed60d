"""``python -m channel_asgi``: the same CLI as ``channel-asgi``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

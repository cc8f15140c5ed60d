"""``channel-asgi serve`` with the number rule (SPEC 6.1) switched off: the benchmark's baseline
for what that check costs. Never a way to run the library: the check is what keeps a publisher
from breaking every subscriber.

    python -m benchmarks.unchecked serve --port 8000 ...   # the same arguments as channel-asgi
"""

from __future__ import annotations

import sys

from channel_asgi import cli, protocol


def _always_fits(body: bytes) -> bool:
    return True


if __name__ == "__main__":
    protocol.fits = _always_fits  # decode_publish looks it up at each call
    sys.exit(cli.main(sys.argv[1:]))

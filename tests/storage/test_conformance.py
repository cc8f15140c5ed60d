"""The Storage protocol, as every backend must honour it (memory and Redis here)."""

from __future__ import annotations

from channel_asgi.storage.conformance import *  # noqa: F403 - the suite's tests and fixtures


def test_every_test_of_the_suite_is_exported() -> None:
    """A backend's tests import the suite with ``*``: a test left out of ``__all__`` never runs."""
    from channel_asgi.storage import conformance

    tests = {name for name in dir(conformance) if name.startswith("test_")}
    assert tests <= set(conformance.__all__)

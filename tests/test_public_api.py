"""The public names: ``__all__`` sorted and complete, and the imports SPEC section 1 promises."""

from __future__ import annotations

import importlib
import types

import pytest

#: Names a module defines that are not part of its API.
NOT_API = {"annotations", "__version__"}

MODULES = ["channel_asgi", "channel_asgi.storage", "channel_asgi.errors"]


def public_names(module: types.ModuleType) -> set[str]:
    """Names bound in ``module`` that look public: no underscore, not a submodule or import."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name not in NOT_API
        and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_sorted_without_duplicates(module_name: str) -> None:
    """``__all__`` is kept sorted, so a diff shows exactly what was exported."""
    exported = importlib.import_module(module_name).__all__
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize("module_name", MODULES)
def test_every_name_in_all_is_importable(module_name: str) -> None:
    """Each name ``__all__`` lists really exists (``from module import *`` works)."""
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(module.__all__) <= set(namespace)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_is_in_all(module_name: str) -> None:
    """A public-looking name left out of ``__all__`` is a mistake: export it or prefix it."""
    module = importlib.import_module(module_name)
    assert public_names(module) - set(module.__all__) == set()


def test_spec_imports_from_the_package() -> None:
    """``from channel_asgi import ChannelApp, ChannelMiddleware, Reject`` works (SPEC section 1)."""
    from channel_asgi import ChannelApp, ChannelMiddleware, Reject

    assert callable(ChannelApp)
    assert callable(ChannelMiddleware)
    assert issubclass(Reject, Exception)


def test_spec_imports_the_protocols_and_errors() -> None:
    """The plug-in Protocols and the hook error are public package names."""
    import channel_asgi
    from channel_asgi.errors import Reject

    assert channel_asgi.Reject is Reject
    for name in ("Auth", "Storage", "Envelope", "StorageUnavailable"):
        assert name in channel_asgi.__all__


def test_spec_imports_memory_storage() -> None:
    """``from channel_asgi.storage import MemoryStorage`` works and builds a Storage."""
    from channel_asgi import Storage
    from channel_asgi.storage import MemoryStorage

    assert isinstance(MemoryStorage(), Storage)


def test_spec_imports_redis_storage() -> None:
    """``from channel_asgi.storage import RedisStorage`` works, without the redis extra too."""
    storage = importlib.import_module("channel_asgi.storage")
    if not hasattr(storage, "RedisStorage"):
        pytest.skip(
            "channel_asgi.storage.RedisStorage is not implemented yet (SPEC section 1 names it)"
        )
    redis_storage = storage.RedisStorage
    assert "RedisStorage" in storage.__all__
    assert isinstance(redis_storage, type)

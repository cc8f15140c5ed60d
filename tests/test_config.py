"""Option validation: ``Settings`` and the ``ChannelApp`` constructor refuse bad values at once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest

from channel_asgi import ChannelApp
from channel_asgi.config import Settings
from channel_asgi.storage import MemoryStorage

NAN = float("nan")
INF = float("inf")


class SharedStorage(MemoryStorage):
    """A storage that claims other processes see it, as RedisStorage does."""

    shared = True


#: Options of ``Settings`` (and so of ``ChannelApp``) with a value of the wrong type, and the bad
#: value the message must quote (the item, when one item of a collection is wrong).
SETTINGS_TYPE_ERRORS = [
    pytest.param("history_size", "10", "'10'", id="history_size-str"),
    pytest.param("history_size", 1.5, "1.5", id="history_size-float"),
    pytest.param("history_size", True, "True", id="history_size-bool"),
    pytest.param("history_ttl", "60", "'60'", id="history_ttl-str"),
    pytest.param("archive_size", "5000", "'5000'", id="archive_size-str"),
    pytest.param("archive_size", True, "True", id="archive_size-bool"),
    pytest.param("max_body_bytes", 1024.0, "1024.0", id="max_body_bytes-float"),
    pytest.param("heartbeat", "15", "'15'", id="heartbeat-str"),
    pytest.param("heartbeat", True, "True", id="heartbeat-bool"),
    pytest.param("heartbeat", None, "None", id="heartbeat-none"),
    pytest.param("max_buffer_bytes", 1024.0, "1024.0", id="max_buffer_bytes-float"),
    pytest.param("token_ttl", "86400", "'86400'", id="token_ttl-str"),
    pytest.param("widget_keys", "single-string", "'single-string'", id="widget_keys-one-string"),
    pytest.param("widget_keys", [5], "5", id="widget_keys-int-item"),
    pytest.param(
        "webhook_urls",
        "https://a.example/hooks",
        "'https://a.example/hooks'",
        id="webhook_urls-one-string",
    ),
    pytest.param("webhook_urls", [5], "5", id="webhook_urls-int-item"),
    pytest.param("rate_limit", (1,), "(1,)", id="rate_limit-one-item"),
    pytest.param("rate_limit", (1, 2, 3), "(1, 2, 3)", id="rate_limit-three-items"),
    pytest.param("rate_limit", 5, "5", id="rate_limit-number"),
    pytest.param("rate_limit", ("1", 2), "'1'", id="rate_limit-str-rate"),
    pytest.param("ip_rate_limit", (1,), "(1,)", id="ip_rate_limit-one-item"),
    pytest.param("slow_mode", "10", "'10'", id="slow_mode-str"),
    pytest.param("slow_mode", True, "True", id="slow_mode-bool"),
    pytest.param("system_events_max_viewers", 1000.0, "1000.0", id="max_viewers-float"),
    pytest.param("presence_interval", "1", "'1'", id="presence_interval-str"),
    pytest.param("max_connections_per_ip", 2.5, "2.5", id="max_connections_per_ip-float"),
    pytest.param("max_connections_per_ip", "9", "'9'", id="max_connections_per_ip-str"),
    pytest.param("body_timeout", "10", "'10'", id="body_timeout-str"),
    pytest.param("metrics", "yes", "'yes'", id="metrics-str"),
    pytest.param("metrics", 1, "1", id="metrics-int"),
]

#: Options of ``Settings`` (and so of ``ChannelApp``) of the right type but out of range, with the
#: bad value the message must quote.
SETTINGS_VALUE_ERRORS = [
    pytest.param("history_size", -1, "-1", id="history_size-negative"),
    pytest.param("history_ttl", 0, "0", id="history_ttl-zero"),
    pytest.param("archive_size", -1, "-1", id="archive_size-negative"),
    pytest.param("history_ttl", INF, "inf", id="history_ttl-inf"),
    pytest.param("history_ttl", NAN, "nan", id="history_ttl-nan"),
    pytest.param("max_body_bytes", 0, "0", id="max_body_bytes-zero"),
    pytest.param("heartbeat", 0, "0", id="heartbeat-zero"),
    pytest.param("heartbeat", -1.0, "-1.0", id="heartbeat-negative"),
    pytest.param("heartbeat", NAN, "nan", id="heartbeat-nan"),
    pytest.param("heartbeat", INF, "inf", id="heartbeat-inf"),
    pytest.param("max_buffer_bytes", 10, "10", id="max_buffer_bytes-tiny"),
    pytest.param("token_ttl", -1, "-1", id="token_ttl-negative"),
    pytest.param("token_ttl", NAN, "nan", id="token_ttl-nan"),
    pytest.param("widget_keys", [""], "''", id="widget_keys-empty-key"),
    pytest.param("webhook_timeout", 0, "0", id="webhook_timeout-zero"),
    pytest.param("rate_limit", (0, 1), "0", id="rate_limit-zero-rate"),
    pytest.param("rate_limit", (1, -1), "-1", id="rate_limit-negative-burst"),
    pytest.param("ip_rate_limit", (1, 0.5), "0.5", id="ip_rate_limit-burst-below-one"),
    pytest.param("slow_mode", 0, "0", id="slow_mode-zero"),
    pytest.param("slow_mode", -1.0, "-1.0", id="slow_mode-negative"),
    pytest.param("slow_mode", NAN, "nan", id="slow_mode-nan"),
    pytest.param("system_events_max_viewers", -1, "-1", id="system_events_max_viewers-negative"),
    pytest.param("presence_interval", 0, "0", id="presence_interval-zero"),
    pytest.param("reconnect_delay", -3.0, "-3.0", id="reconnect_delay-negative"),
    pytest.param("hook_timeout", 0, "0", id="hook_timeout-zero"),
    pytest.param("max_connections_per_ip", 0, "0", id="max_connections_per_ip-zero"),
    pytest.param("body_timeout", 0, "0", id="body_timeout-zero"),
    pytest.param("body_timeout", INF, "inf", id="body_timeout-inf"),
]

#: Options only ``ChannelApp`` takes, with a wrong type, and what the message must quote.
APP_TYPE_ERRORS = [
    pytest.param(
        "cors_origins", "https://example.com", "'https://example.com'", id="cors_origins-one-string"
    ),
    pytest.param("cors_origins", [5], "5", id="cors_origins-int-item"),
    pytest.param("storage", object(), "object", id="storage-not-a-storage"),
    pytest.param("auth", object(), "object", id="auth-without-identify"),
]


@pytest.fixture(params=[Settings, ChannelApp], ids=["Settings", "ChannelApp"])
def build(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Each option table runs against ``Settings`` and against the ``ChannelApp`` built on it."""
    factory: Callable[..., object] = request.param
    return factory


@pytest.mark.parametrize(("option", "value", "shown"), SETTINGS_TYPE_ERRORS)
def test_option_of_the_wrong_type_raises_type_error_quoting_it(
    build: Callable[..., object], option: str, value: Any, shown: str
) -> None:
    """A wrongly typed option is a TypeError whose message quotes the bad value."""
    with pytest.raises(TypeError) as caught:
        build(**{option: value})
    assert shown in str(caught.value)


@pytest.mark.parametrize(("option", "value", "shown"), SETTINGS_VALUE_ERRORS)
def test_option_out_of_range_raises_value_error_quoting_it(
    build: Callable[..., object], option: str, value: Any, shown: str
) -> None:
    """An option of the right type but a wrong value is a ValueError quoting the value."""
    with pytest.raises(ValueError) as caught:
        build(**{option: value})
    assert shown in str(caught.value)


@pytest.mark.parametrize(("option", "value", "shown"), APP_TYPE_ERRORS)
def test_app_option_of_the_wrong_type_raises_type_error_quoting_it(
    option: str, value: Any, shown: str
) -> None:
    """``ChannelApp``'s own options are type-checked too, quoting the bad value."""
    with pytest.raises(TypeError) as caught:
        ChannelApp(**{option: value})
    assert shown in str(caught.value)


@pytest.mark.parametrize(
    "origin",
    ["example.com", "//example.com", "example.com:443"],
)
def test_cors_origin_without_a_scheme_raises_value_error_quoting_it(origin: str) -> None:
    """A CORS origin must be ``scheme://host[:port]``; anything else is a ValueError."""
    with pytest.raises(ValueError) as caught:
        ChannelApp(cors_origins=[origin])
    assert repr(origin) in str(caught.value)


@pytest.mark.parametrize("secret", [5, 5.0, ["secret"]], ids=["int", "float", "list"])
def test_secret_of_the_wrong_type_raises_type_error(secret: Any) -> None:
    """A secret must be str or bytes; an int is not silently used as a key of zero bytes."""
    with pytest.raises(TypeError):
        ChannelApp(secret=secret)


@pytest.mark.parametrize("secret", ["", b""], ids=["str", "bytes"])
def test_empty_secret_raises_value_error(secret: str | bytes) -> None:
    """An empty secret would make every token forgeable, so it is refused."""
    with pytest.raises(ValueError, match="secret"):
        ChannelApp(secret=secret)


def test_shared_storage_without_a_secret_raises_value_error() -> None:
    """Processes sharing a storage must share a secret, so none at all is refused."""
    with pytest.raises(ValueError, match="secret"):
        ChannelApp(storage=SharedStorage())


def test_shared_storage_with_a_secret_is_accepted() -> None:
    """With a secret, a shared storage is what scaling out needs."""
    storage = SharedStorage()
    assert ChannelApp(storage=storage, secret="s3cret").storage is storage


def test_app_without_a_secret_warns_it_is_single_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Omitting the secret logs one WARNING on ``channel_asgi`` saying tokens are per process."""
    caplog.set_level(logging.WARNING, logger="channel_asgi")
    ChannelApp()
    warnings = [
        record
        for record in caplog.records
        if record.name == "channel_asgi" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "process" in text
    assert "secret=" in text


def test_app_with_a_long_secret_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """With a secret of 32 bytes or more nothing is logged at construction."""
    caplog.set_level(logging.DEBUG, logger="channel_asgi")
    ChannelApp(secret="s" * 32)
    assert [record for record in caplog.records if record.name == "channel_asgi"] == []


def test_app_with_a_short_secret_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A secret under 32 bytes works but is logged as weak."""
    caplog.set_level(logging.WARNING, logger="channel_asgi")
    ChannelApp(secret="s3cret")
    assert any("32 bytes" in record.getMessage() for record in caplog.records)


def test_defaults_are_those_of_the_spec() -> None:
    """``Settings()`` holds the defaults SPEC section 2 lists."""
    settings = Settings()
    assert settings.widget_keys is None
    assert settings.history_size == 1000
    assert settings.history_ttl is None
    assert settings.max_body_bytes == 65536
    assert settings.heartbeat == 15.0
    assert settings.max_buffer_bytes == 1048576
    assert settings.token_ttl == 86400.0
    assert settings.webhook_urls == ()
    assert settings.webhook_timeout == 5.0
    assert settings.rate_limit is None
    assert settings.ip_rate_limit is None
    assert settings.slow_mode is None
    assert settings.system_events_max_viewers == 1000
    assert settings.presence_interval == 1.0
    assert settings.max_connections_per_ip == 256
    assert settings.body_timeout == 10.0


def test_settings_normalise_collections_and_numbers() -> None:
    """Keys become a frozenset, URLs a sorted tuple, durations and rates floats."""
    settings = Settings(
        widget_keys=["b", "a", "a"],
        webhook_urls=["https://b.example/h", "https://a.example/h"],
        heartbeat=2,
        token_ttl=10,
        rate_limit=(5, 10),
    )
    assert settings.widget_keys == frozenset({"a", "b"})
    assert settings.webhook_urls == ("https://a.example/h", "https://b.example/h")
    assert type(settings.heartbeat) is float
    assert type(settings.token_ttl) is float
    assert settings.rate_limit == (5.0, 10.0)


def test_settings_are_frozen() -> None:
    """Options are checked once, so they cannot be changed afterwards."""
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.heartbeat = 0.0  # type: ignore[misc]


def test_app_passes_its_options_to_its_settings() -> None:
    """``ChannelApp`` keyword arguments end up, validated, in ``app.settings``."""
    app = ChannelApp(
        history_size=5, heartbeat=1, widget_keys={"k"}, webhook_urls=["https://a.example/h"]
    )
    assert app.settings.history_size == 5
    assert app.settings.heartbeat == 1.0
    assert app.settings.widget_keys == frozenset({"k"})
    assert app.settings.webhook_urls == ("https://a.example/h",)


def test_history_size_zero_is_allowed() -> None:
    """A channel may retain nothing (``history_size=0``): pure live fan-out."""
    assert Settings(history_size=0).history_size == 0

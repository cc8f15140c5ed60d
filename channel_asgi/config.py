"""``Settings``: the validated options of a ``ChannelApp``, shared by its parts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Settings"]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _strings(name: str, values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of strings, not one string: {values!r}")
    result = frozenset(values)
    for value in result:
        if not isinstance(value, str):
            raise TypeError(f"{name} must hold strings, got {value!r}")
        if not value:
            raise ValueError(f"{name} must not hold an empty string: ''")
    return result


def _rate(name: str, value: tuple[float, float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        per_second, burst = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (per_second, burst), got {value!r}") from None
    rate = _positive(f"{name} per_second", per_second)
    burst = _positive(f"{name} burst", burst)
    if burst < 1:  # a bucket that never holds a whole token would refuse everything
        raise ValueError(f"{name} burst must be at least 1, got {burst!r}")
    return (rate, burst)


@dataclass(frozen=True, slots=True)
class Settings:
    """Options of a ``ChannelApp``, checked once (see ``docs/configuration.md``)."""

    widget_keys: Iterable[str] | None = None
    history_size: int = 1000
    history_ttl: float | None = None
    archive_size: int = 0
    max_body_bytes: int = 65536
    heartbeat: float = 15.0
    max_buffer_bytes: int = 1048576
    token_ttl: float = 86400.0
    webhook_urls: Iterable[str] = ()
    webhook_timeout: float = 5.0
    rate_limit: tuple[float, float] | None = None
    ip_rate_limit: tuple[float, float] | None = None
    slow_mode: float | None = None
    system_events_max_viewers: int = 1000
    presence_interval: float = 1.0
    reconnect_delay: float = 3.0
    hook_timeout: float = 5.0
    max_connections_per_ip: int | None = 256
    body_timeout: float = 10.0
    metrics: bool = False
    max_channels_per_connection: int = 100

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "widget_keys", _strings("widget_keys", self.widget_keys))
        _count("history_size", self.history_size)
        if self.history_ttl is not None:
            set_(self, "history_ttl", _positive("history_ttl", self.history_ttl))
        _count("archive_size", self.archive_size)
        _count("max_body_bytes", self.max_body_bytes, minimum=1)
        set_(self, "heartbeat", _positive("heartbeat", self.heartbeat))
        _count("max_buffer_bytes", self.max_buffer_bytes, minimum=1024)
        set_(self, "token_ttl", _positive("token_ttl", self.token_ttl))
        urls = _strings("webhook_urls", self.webhook_urls) or frozenset()
        set_(self, "webhook_urls", tuple(sorted(urls)))
        set_(self, "webhook_timeout", _positive("webhook_timeout", self.webhook_timeout))
        set_(self, "rate_limit", _rate("rate_limit", self.rate_limit))
        set_(self, "ip_rate_limit", _rate("ip_rate_limit", self.ip_rate_limit))
        if self.slow_mode is not None:
            set_(self, "slow_mode", _positive("slow_mode", self.slow_mode))
        _count("system_events_max_viewers", self.system_events_max_viewers)
        set_(self, "presence_interval", _positive("presence_interval", self.presence_interval))
        set_(self, "reconnect_delay", _positive("reconnect_delay", self.reconnect_delay))
        set_(self, "hook_timeout", _positive("hook_timeout", self.hook_timeout))
        if self.max_connections_per_ip is not None:
            _count("max_connections_per_ip", self.max_connections_per_ip, minimum=1)
        set_(self, "body_timeout", _positive("body_timeout", self.body_timeout))
        _count("max_channels_per_connection", self.max_channels_per_connection, minimum=1)
        if not isinstance(self.metrics, bool):
            raise TypeError(f"metrics must be True or False, got {self.metrics!r}")

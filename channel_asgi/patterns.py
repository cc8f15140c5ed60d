"""Channel patterns such as ``chats/{id}``, each with its own authoriser and options (Northle).

``{name}`` matches exactly one path segment; other segments match literally. When several patterns
match a channel, the one with the most literal segments wins, and among equals the first
registered.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .auth import Action
from .http import validate_channel
from .protocol import PUBLISH_TYPES

__all__ = ["ChannelPattern", "PatternSet", "pattern_matches"]

_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: ``authorize(user_id, action, params)``: True allows; sync or async.
Authorizer = Callable[[str | None, Action, Mapping[str, str]], bool | Awaitable[bool]]


def pattern_matches(pattern: str, channel: str) -> dict[str, str] | None:
    """Return the parameters if ``channel`` matches ``pattern`` (or equals it), else None."""
    wanted = pattern.split("/")
    parts = channel.split("/")
    if len(wanted) != len(parts):
        return None
    params: dict[str, str] = {}
    for want, part in zip(wanted, parts, strict=True):
        name = _PARAM.fullmatch(want)
        if name is not None:
            params[name.group(1)] = part
        elif want != part:
            return None
    return params


@dataclass(frozen=True)
class ChannelPattern:
    """The rules of the channels matching ``pattern``.

    Attributes:
        pattern: e.g. ``"chats/{id}"``.
        authorize: decides each action (True allows, False is 403), or None to allow all.
        anonymous_subscribe: whether users without an identity may subscribe (else 401).
        anonymous_publish: whether anonymous users' publish tokens may publish (else 403).
        history: broadcasts retained per channel (overrides the app's ``history_size``);
            False: none, and reading what was said before (a ``request``, a resume's replay,
            ``GET /history``) is refused.
        archive: broadcasts archived by media time per channel (overrides the app's
            ``archive_size``; 0: none).
        types: the publish types allowed (others are 403), or None for all.
        slow_mode: seconds a user waits between two broadcasts (overrides the app's
            ``slow_mode``; 0 turns it off), or None for the app's.
    """

    pattern: str
    authorize: Authorizer | None = None
    anonymous_subscribe: bool = True
    anonymous_publish: bool = True
    history: int | None = None
    types: frozenset[str] | None = None
    slow_mode: float | None = None
    archive: int | None = None
    literal_segments: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        segments = self.pattern.split("/")
        probe = "/".join("x" if _PARAM.fullmatch(s) else s for s in segments)
        try:
            validate_channel(probe)
        except Exception:
            raise ValueError(f"not a valid channel pattern: {self.pattern!r}") from None
        if any("{" in s or "}" in s for s in segments if not _PARAM.fullmatch(s)):
            raise ValueError(f"a parameter must be a whole segment, like {{id}}: {self.pattern!r}")
        if self.history is not None and (
            not isinstance(self.history, int) or self.history < 0 or self.history is True
        ):
            raise ValueError(f"history must be an int >= 0 or False, got {self.history!r}")
        if self.archive is not None and (
            isinstance(self.archive, bool) or not isinstance(self.archive, int) or self.archive < 0
        ):
            raise ValueError(f"archive must be an int >= 0, got {self.archive!r}")
        if self.types is not None:
            unknown = set(self.types) - PUBLISH_TYPES
            if unknown:
                raise ValueError(
                    f"unknown publish types {sorted(unknown)}; use {sorted(PUBLISH_TYPES)}"
                )
        if self.slow_mode is not None and (
            isinstance(self.slow_mode, bool)
            or not isinstance(self.slow_mode, (int, float))
            or not 0 <= self.slow_mode < math.inf
        ):
            raise ValueError(f"slow_mode must be a finite number >= 0, got {self.slow_mode!r}")
        if self.authorize is not None and not callable(self.authorize):
            raise TypeError(f"authorize must be callable, got {self.authorize!r}")
        literal = sum(1 for s in segments if not _PARAM.fullmatch(s))
        object.__setattr__(self, "literal_segments", literal)

    async def allows(self, user_id: str | None, action: Action, params: Mapping[str, str]) -> bool:
        """Ask the authoriser (if any) whether ``user_id`` may do ``action``."""
        if self.authorize is None:
            return True
        result: Any = self.authorize(user_id, action, params)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)


class PatternSet:
    """The registered patterns, and the lookup of the one that governs a channel."""

    def __init__(self) -> None:
        #: In registration order; add them with :meth:`add`.
        self.registered: list[ChannelPattern] = []
        self._cache: dict[str, tuple[ChannelPattern, dict[str, str]] | None] = {}

    def add(self, pattern: ChannelPattern) -> None:
        """Register a pattern (later lookups see it)."""
        self.registered.append(pattern)
        self._cache.clear()

    def match(self, channel: str) -> tuple[ChannelPattern, dict[str, str]] | None:
        """Return the most specific pattern matching ``channel`` and its parameters, if any."""
        if channel in self._cache:
            return self._cache[channel]
        best: tuple[ChannelPattern, dict[str, str]] | None = None
        for pattern in self.registered:
            params = pattern_matches(pattern.pattern, channel)
            if params is not None and (
                best is None or pattern.literal_segments > best[0].literal_segments
            ):
                best = (pattern, params)
        if len(self._cache) < 10000:  # bounded: channel names come from clients
            self._cache[channel] = best
        return best

"""Who the user is, and whether they may do an action on a channel.

For a subscribe, the user is, in this order: the ``sub`` of a valid identity token (``?token=`` or
``Authorization: Bearer``; an invalid one is 401, never anonymous), else what ``auth.identify``
returns, else an anonymous user with a fresh id. For a publish, the user is the one the publish
token was issued to. Then ``auth.allow`` (when the ``Auth`` has it) and the governing channel
pattern decide.

Reading a channel's retained broadcasts is one permission whatever the route (a ``request``
publish, with or without a range of the archive, a resume with ``Last-Event-ID``, and
``GET /history``): the action :data:`HISTORY_ACTION`, asked through
:meth:`Access.authorize_history`. A pattern with ``history=False`` refuses it to everyone. A
resume without it is not refused: the stream opens, replays nothing and says
``recovered: false``.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any, Final

from .auth import Action, Auth, Request
from .errors import Forbidden, Unauthorized
from .http import Scope, headers_of, request_token
from .identity import IdentityTokens
from .patterns import ChannelPattern, PatternSet

__all__ = ["HISTORY_ACTION", "Access"]

#: The action that authorises reading a channel's history, on every route that reads it.
HISTORY_ACTION: Final[Action] = "request"


class Access:
    """The app's identity and authorisation decisions."""

    def __init__(self, auth: Auth | None, identity: IdentityTokens, patterns: PatternSet) -> None:
        self.auth = auth
        self.identity = identity
        self.patterns = patterns
        #: Whether anything can refuse an action (an ``Auth.allow`` or a channel pattern).
        self.decides = getattr(auth, "allow", None) is not None or bool(patterns.registered)

    def add_pattern(self, pattern: ChannelPattern) -> None:
        """Register the rules of the channels matching ``pattern``."""
        self.patterns.add(pattern)
        self.decides = True

    async def identify(self, scope: Scope, channel: str) -> tuple[str, bool]:
        """Return ``(user_id, anonymous)`` for a subscribe, once it is allowed to subscribe.

        Raises:
            Unauthorized: a bad identity token, or an anonymous user where one is not allowed.
            Forbidden: the user may not subscribe to ``channel``.
        """
        token = request_token(scope, headers_of(scope))
        user_id: str | None
        if token is not None:
            user_id = self.identity.verify(token, channel)
        elif self.auth is not None:
            user_id = await self.auth.identify(Request(scope))
            if user_id is not None and (not isinstance(user_id, str) or not user_id):
                raise TypeError(f"auth.identify must return a non-empty str or None: {user_id!r}")
        else:
            user_id = None
        await self.authorize(user_id, channel, "subscribe")
        if user_id is None:
            return str(uuid.uuid4()), True
        return user_id, False

    async def authorize(
        self, user_id: str | None, channel: str, action: Action, *, publishing: bool = True
    ) -> None:
        """Raise unless ``user_id`` (None: anonymous) may do ``action`` on ``channel``.

        ``publishing`` False asks for the permission without the publish itself, so the
        pattern's ``anonymous_publish`` (a rule about writing) does not apply.
        """
        allow = getattr(self.auth, "allow", None)
        if allow is not None:
            allowed: Any = allow(user_id, channel, action)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                if user_id is None:
                    raise Unauthorized(f"Sign in to {action} on this channel")
                raise Forbidden(f"Not allowed to {action} on this channel")
        found = self.patterns.match(channel)
        if found is None:
            return
        pattern, params = found
        if user_id is None:
            if action == "subscribe" and not pattern.anonymous_subscribe:
                raise Unauthorized("Sign in to subscribe to this channel")
            if publishing and action != "subscribe" and not pattern.anonymous_publish:
                raise Forbidden("Anonymous users may not publish on this channel")
        if action != "subscribe" and pattern.types is not None and action not in pattern.types:
            raise Forbidden(f"Publish type {action!r} is not allowed on this channel")
        if action == HISTORY_ACTION and pattern.history is False:
            raise Forbidden("This channel keeps no history to read (history=False)")
        if not await pattern.allows(user_id, action, params):
            raise Forbidden(f"Not allowed to {action} on this channel")

    async def authorize_history(self, user_id: str | None, channel: str) -> None:
        """Raise unless ``user_id`` (None: anonymous) may read the history of ``channel``.

        Raises:
            Unauthorized: an anonymous user that ``auth.allow`` refuses.
            Forbidden: the user may not read it (``auth.allow``, or the pattern's ``types`` or
                ``authorize``). ``anonymous_publish`` is about writing: a read-only channel's
                anonymous viewers still resume (their ``request`` publish is refused as a publish).
        """
        await self.authorize(user_id, channel, HISTORY_ACTION, publishing=False)

    async def may_replay(
        self, user_id: str, anonymous: bool, channel: str, last_event_id: str | None
    ) -> bool:
        """Return whether a subscribe may replay what it missed (yes when it resumes nothing)."""
        if last_event_id is None:
            return True
        return await self.may_read_history(None if anonymous else user_id, channel)

    async def may_read_history(self, user_id: str | None, channel: str) -> bool:
        """Return whether ``user_id`` (None: anonymous) may read the history of ``channel``."""
        if not self.decides:
            return True
        try:
            await self.authorize_history(user_id, channel)
        except (Unauthorized, Forbidden):
            return False
        return True

    def slow_mode(self, channel: str, default: float | None) -> float | None:
        """Return the seconds between two broadcasts of a user on ``channel`` (None: off)."""
        if not self.patterns.registered:
            return default
        found = self.patterns.match(channel)
        if found is None or found[0].slow_mode is None:
            return default
        return found[0].slow_mode or None

    def history_size(self, channel: str, default: int) -> int:
        """Return how many broadcasts ``channel`` retains."""
        if not self.patterns.registered:
            return default
        found = self.patterns.match(channel)
        if found is None or found[0].history is None:
            return default
        return int(found[0].history)

    def archive_size(self, channel: str, default: int) -> int:
        """Return how many broadcasts ``channel`` archives by media time."""
        if not self.patterns.registered:
            return default
        found = self.patterns.match(channel)
        if found is None or found[0].archive is None:
            return default
        return found[0].archive

"""The number rule (SPEC 6.1): every number a publisher sends must read the same everywhere.

An integer must lie in [-2**63, 2**64) and a float must be finite: that is what msgspec, Python's
``json`` and browsers all read alike. ``message`` travels to subscribers as the raw JSON it came
in, so a number outside the rule (a 5000-digit integer, ``1e999``) would reach every subscriber
and break those that cannot read it, over and over from history. Such a publish is refused with
422, naming the path of the first bad number (``$.message.a[2]``).

The check that runs on every publish is two C calls on the whole body: msgspec decodes it
(refusing infinite floats) and encodes the result as MessagePack, whose integers have exactly
that range. Only when that fails is the body parsed again in Python, to name the path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any, Final

import msgspec

from .errors import UnprocessableEntity

__all__ = ["check_json", "encode_checked", "fits"]

_INT_MIN: Final = -(2**63)
_INT_END: Final = 2**64
_RULE: Final = "integers must be in [-2^63, 2^64) and floats finite"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_decode_any: Final = msgspec.json.Decoder().decode
_encode_msgpack: Final = msgspec.msgpack.Encoder().encode
_encode_json: Final = msgspec.json.Encoder().encode


def fits(body: bytes) -> bool:
    """Return whether every number in the JSON ``body`` follows the rule.

    A body that is not valid JSON fits (it is refused as malformed elsewhere).
    """
    try:
        _encode_msgpack(_decode_any(body))
    except OverflowError:  # an integer outside [-2**63, 2**64)
        return False
    except msgspec.ValidationError:  # "Number out of range": a float that is infinite
        return False
    except (msgspec.DecodeError, RecursionError):
        return True
    return True


def check_json(body: bytes, *, root: str = "$") -> None:
    """Refuse the JSON ``body`` if a number in it breaks the rule.

    Args:
        body: a JSON document (one that is not valid JSON passes: it is refused elsewhere).
        root: the path of ``body`` in the document the client sent.

    Raises:
        UnprocessableEntity: a number is out of range; the message names its path.
    """
    if not fits(body):
        raise _refusal(*_first_bad(_parse(body), root))


def encode_checked(value: Any, *, root: str = "$") -> bytes:
    """Encode a Python value to JSON, refusing numbers that break the rule.

    msgspec writes NaN and the infinities as ``null``, so a ``null`` in the output sends the
    value itself through the rule.

    Raises:
        UnprocessableEntity: a number is out of range; the message names its path.
        TypeError: ``value`` is not JSON-encodable.
    """
    encoded = _encode_json(value)
    if not fits(encoded):
        raise _refusal(*_first_bad(_parse(encoded), root))
    if b"null" in encoded:
        found = _first_bad(msgspec.to_builtins(value), root)
        if found[1] is not None:
            raise _refusal(*found)
    return encoded


class _Bad:
    """A number outside the rule, as the slow path's parser found it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Object(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order (repeated keys included: all of them are sent)."""


def _parse_int(text: str) -> object:
    digits = len(text) - text.startswith("-")
    if digits > 20 or not _INT_MIN <= int(text) < _INT_END:
        return _Bad(text)
    return 0


def _parse_float(text: str) -> object:
    return _Bad(text) if math.isinf(float(text)) else 0.0


def _parse(body: bytes) -> Any:
    try:
        return json.loads(
            body, parse_int=_parse_int, parse_float=_parse_float, object_pairs_hook=_Object
        )
    except (ValueError, RecursionError):  # too deep for Python's parser: no path to give
        return _Bad("")


def _first_bad(tree: Any, root: str) -> tuple[str, str | None]:
    """Return the path and text of the first number (in document order) that breaks the rule."""
    for path, node in _walk(tree, root):
        if isinstance(node, _Bad):
            return path, node.text
        if isinstance(node, float) and not math.isfinite(node):
            return path, repr(node)
        if isinstance(node, int) and not isinstance(node, bool):
            if not _INT_MIN <= node < _INT_END:
                return path, str(node)
    return root, None


def _walk(tree: Any, root: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, node)`` for every node, depth first, in document order (no recursion)."""
    stack: list[tuple[str, Any]] = [(root, tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, _Object):
            stack.extend((_key_path(path, key), child) for key, child in reversed(node))
        elif isinstance(node, dict):
            items = reversed(node.items())
            stack.extend((_key_path(path, str(key)), child) for key, child in items)
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(node))))


def _key_path(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_encode_json(key).decode()}]"


def _refusal(path: str, text: str | None) -> UnprocessableEntity:
    shown = "" if not text else f" {text[:24]}…" if len(text) > 25 else f" {text}"
    return UnprocessableEntity(f"Number{shown} is out of range ({_RULE}) - at `{path}`")

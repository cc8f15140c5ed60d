"""The argument checks the backends share: what ``base`` says a call refuses with ValueError."""

from __future__ import annotations

import math

__all__ = ["check_bucket", "check_page", "check_time"]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_time(name: str, value: float | None) -> None:
    """Refuse a timestamp, range bound or ban end that is given and not a finite number."""
    if value is not None and not _finite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_page(start: float | None, end: float | None, limit: int) -> None:
    """Refuse the arguments of an archive range that ``Archive.archive_range`` refuses."""
    check_time("start", start)
    check_time("end", end)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


def check_bucket(rate: float, burst: float) -> None:
    """Refuse a token bucket's rate and burst that ``Limits.take_token`` refuses."""
    if not _finite(rate) or not rate > 0:
        raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
    if not _finite(burst) or not burst >= 1:
        raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")

"""The one way cirelay writes a moment: RFC 3339 in UTC with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(moment: datetime, *, timespec: str = "milliseconds") -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: a moment needs a timezone")
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def epoch_text(timestamp: float | None) -> str | None:
    """``utc_text`` of a Unix timestamp; ``None`` stays ``None``."""
    return None if timestamp is None else utc_text(datetime.fromtimestamp(timestamp, UTC))

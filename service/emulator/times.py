"""CI's time format: `2022-06-30T18:47:18+0800`, always in China Standard Time, `-` for unset."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8))
CI_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
UNSET = "-"


def now() -> datetime:
    return datetime.now(CST)


def ci_time(moment: datetime | None) -> str:
    return UNSET if moment is None else moment.astimezone(CST).strftime(CI_TIME_FORMAT)


def parse_ci_time(text: str) -> datetime:
    """Parse a CI time; raises ValueError. Python accepts both `+0800` and `+08:00` here."""
    return datetime.strptime(text.strip(), CI_TIME_FORMAT)


def to_iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)

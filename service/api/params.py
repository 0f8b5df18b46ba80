"""Query parameters shared by the list routes: page size and opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii

from service.api.errors import ApiError


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    # ASCII digits only: int() would also take "1_0", " 7" and other scripts' digits.
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if not 1 <= limit <= maximum:
        raise invalid_parameter("limit", f"limit must be an integer from 1 to {maximum}")
    return limit


def encode_cursor(prefix: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}{seq}".encode()).decode().rstrip("=")


def decode_cursor(prefix: str, cursor: str, *, parameter: str, code: str) -> int:
    """The sequence number in a cursor this API issued; anything else is a 400 ``code``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    head, _, number = raw.partition(prefix)
    # ASCII digits that fit SQLite's 64-bit integers; anything else was not issued here.
    if head or not (number.isascii() and number.isdigit() and len(number) <= 18):
        message = f"{parameter} is not a cursor this API returned"
        raise ApiError(400, code, message, [{"path": f"query.{parameter}", "message": message}])
    return int(number)


def invalid_parameter(parameter: str, message: str) -> ApiError:
    return ApiError(
        400, "invalid_parameter", message, [{"path": f"query.{parameter}", "message": message}]
    )

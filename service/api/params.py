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
    return _encode(f"{prefix}{seq}")


def decode_cursor(prefix: str, cursor: str, *, parameter: str, code: str) -> int:
    """The sequence number in a cursor this API issued; anything else is a 400 ``code``."""
    head, _, number = _decode(cursor).partition(prefix)
    if head or not _is_number(number):
        message = f"{parameter} is not a cursor this API returned"
        raise ApiError(400, code, message, [{"path": f"query.{parameter}", "message": message}])
    return int(number)


def encode_position(prefix: str, position: tuple[int, int]) -> str:
    """A feed position as a cursor: ``seq`` alone when the backend orders by it (SQLite), so
    cursors issued before PostgreSQL support stay valid; ``xid.seq`` otherwise."""
    xid, seq = position
    return encode_cursor(prefix, seq) if xid == 0 else _encode(f"{prefix}{xid}.{seq}")


def decode_position(prefix: str, cursor: str, *, parameter: str) -> tuple[int, int]:
    """The feed position in a cursor ``encode_position`` issued; anything else is a 400."""
    raw = _decode(cursor)
    head, _, body = raw.partition(prefix)
    xid, dot, seq = body.partition(".")
    if not dot:
        xid, seq = "0", xid
    if head or not (_is_number(xid) and _is_number(seq)):
        message = f"{parameter} is not a cursor this API returned"
        raise ApiError(
            400, "invalid_parameter", message, [{"path": f"query.{parameter}", "message": message}]
        )
    return int(xid), int(seq)


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def _is_number(text: str) -> bool:
    # ASCII digits that fit a 64-bit integer; anything else was not issued here.
    return text.isascii() and text.isdigit() and len(text) <= 18


def invalid_parameter(parameter: str, message: str) -> ApiError:
    return ApiError(
        400, "invalid_parameter", message, [{"path": f"query.{parameter}", "message": message}]
    )

"""Per-job callback tokens: ``<job id>.<HMAC>``, so one path segment authenticates and identifies.

Stateless on purpose: verifying a callback costs one HMAC, no database read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_SEPARATOR = "."


def derive_key(secret: str) -> bytes:
    """A key dedicated to callback tokens, so the configured secret itself is never reused."""
    return hmac.new(secret.encode(), b"cirelay callback token v1", hashlib.sha256).digest()


def callback_token(key: bytes, job_id: str) -> str:
    return f"{job_id}{_SEPARATOR}{_mac(key, job_id)}"


def job_id_from_token(key: bytes, token: str) -> str | None:
    """The job id the token was issued for, or None when it is not one of ours."""
    if not token.isascii():  # ours are ASCII; compare_digest refuses other text
        return None
    job_id, sep, mac = token.rpartition(_SEPARATOR)
    if not sep or not job_id or not hmac.compare_digest(mac, _mac(key, job_id)):
        return None
    return job_id


def _mac(key: bytes, job_id: str) -> str:
    digest = hmac.new(key, job_id.encode(), hashlib.sha256).digest()[:20]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")

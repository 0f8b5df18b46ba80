"""Callback tokens out of logged paths: ``/v1/callbacks/<token>`` → ``/v1/callbacks/[redacted]``."""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# A callback URL's last segment is a credential (a per-job token or CIRELAY_CALLBACK_TOKEN).
_CALLBACK_PATH = "/v1/callbacks/"
_CALLBACK_TOKEN = re.compile(r"(/v1/callbacks/)[^\s\"'?#/\\]+")


def redact_path(path: str) -> str:
    """``path`` with any callback token in it replaced by ``[redacted]``."""
    if _CALLBACK_PATH not in path:
        return path
    return _CALLBACK_TOKEN.sub(r"\1" + REDACTED, path)

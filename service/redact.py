"""Callback tokens out of logged paths: ``/v1/callbacks/<token>`` → ``/v1/callbacks/[redacted]``."""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# A callback URL's last segment is a credential (a per-job token or CIRELAY_CALLBACK_TOKEN).
_CALLBACK_PATH = "/v1/callbacks/"
_TOKEN = r"[^\s\"'?#/\\]+"
_CALLBACK_TOKEN = re.compile(r"(/v1/callbacks/)" + _TOKEN)
_TOKEN_ONLY = re.compile(_TOKEN)
_REDACTED_PATH = _CALLBACK_PATH + REDACTED


def redact_path(path: str) -> str:
    """``path`` (or any text) with every callback token in it replaced by ``[redacted]``."""
    if _CALLBACK_PATH not in path:
        return path
    # The access log's case, once per callback: the path is the route itself.
    if path.startswith(_CALLBACK_PATH) and _TOKEN_ONLY.fullmatch(path, len(_CALLBACK_PATH)):
        return _REDACTED_PATH
    # A line already redacted (the access log's, when the log formatter checks it again).
    if path.count(_CALLBACK_PATH) == path.count(_REDACTED_PATH):
        return path
    return _CALLBACK_TOKEN.sub(r"\1" + REDACTED, path)

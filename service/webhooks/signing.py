"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``v1,<base64 HMAC-SHA256>``
over ``id.timestamp.body``, one per secret so that receivers can rotate keys without a gap."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """``CIRELAY_WEBHOOK_SECRET``: one or more ``whsec_<base64>`` secrets, separated by spaces or
    commas (several during a rotation). ValueError says which one is malformed."""
    keys = []
    for index, secret in enumerate(text.replace(",", " ").split(), start=1):
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"secret {index} must start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError(f"secret {index} is not base64 after {SECRET_PREFIX}") from None
        if len(key) < 16:
            raise ValueError(f"secret {index} must hold at least 16 bytes")
        keys.append(key)
    return tuple(keys)


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one space-separated ``v1,`` signature per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """``webhook-id`` and ``webhook-timestamp`` always; ``webhook-signature`` when keys are set."""
    result = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if keys:
        result["webhook-signature"] = signature(keys, msg_id, timestamp, body)
    return result

"""Who may call the emulator, and for which bucket: credentials, the signed Host, the signature."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.ci.signing import Credentials, SignatureInvalid, verify
from service.emulator.responses import CIError

TOKEN_HEADER = "x-ci-security-token"
# `<bucket>.<ci|cos>.<region>.myqcloud.com`: the official SDK pointed at an IP sends the cos form.
_HOST = re.compile(
    r"(?P<bucket>[a-z0-9][a-z0-9-]*)\.(?:ci|cos)\.(?P<region>[a-z0-9-]+)\.myqcloud\.com(?::\d+)?"
)


@dataclass(frozen=True)
class Target:
    bucket: str
    region: str


def parse_credentials(text: str) -> dict[str, Credentials]:
    """``id:key[:token][,…]`` → credentials by SecretId; raises ValueError naming the entry."""
    found: dict[str, Credentials] = {}
    for n, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), start=1):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"entry {n} must be id:key or id:key:token")
        secret_id, secret_key, *token = parts
        if secret_id in found:
            raise ValueError(f"entry {n}: SecretId {secret_id} is listed twice")
        found[secret_id] = Credentials(secret_id, secret_key, token[0] if token else "")
    return found


def parse_host(host: str) -> Target | None:
    match = _HOST.fullmatch(host.strip().lower())
    return None if match is None else Target(match["bucket"], match["region"])


def authenticate(
    credentials: dict[str, Credentials],
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    now: int,
) -> Credentials:
    """Check the request's signature (and STS token); raise CIError 403 naming the problem."""
    authorization = headers.get("Authorization", "")
    if not authorization:
        raise CIError(403, "AccessDenied", "the request carries no Authorization header")

    def lookup(secret_id: str) -> str | None:
        found = credentials.get(secret_id)
        return None if found is None else found.secret_key

    try:
        secret_id = verify(authorization, method, path, params, headers, lookup, now=now)
    except SignatureInvalid as exc:
        raise CIError(403, exc.code, exc.message) from None
    creds = credentials[secret_id]
    if creds.token and not hmac.compare_digest(
        headers.get(TOKEN_HEADER, "").encode(), creds.token.encode()
    ):
        raise CIError(
            403,
            "InvalidAuthorization",
            f"{TOKEN_HEADER} is missing or is not the token of temporary SecretId {secret_id}",
        )
    return creds

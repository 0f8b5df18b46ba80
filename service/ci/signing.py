"""COS v5 (``q-sign-algorithm=sha1``) request signatures, and their verification.

Pure functions: the clock comes in as ``now``. The canonical form mirrors the official
cos-python-sdk-v5 (``qcloud_cos.cos_auth.CosS3Auth``) byte for byte, quirks included:

- the path is signed as given, *not* URL-encoded (the SDK signs the raw object key);
- keys are URL-encoded and *then* lower-cased, so escapes in keys come out as ``%e4`` while
  escapes in values stay ``%E4``;
- only the SDK's list of headers (``host``, ``content-*``, ``x-cos-*``, ``x-ci-*`` and a few
  more) is signed, whatever else is sent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

# The headers the SDK signs besides every x-cos-* and x-ci-* (cos_auth.filter_headers).
_SIGNED_HEADER_NAMES = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-type",
        "content-md5",
        "content-length",
        "expect",
        "expires",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "origin",
        "range",
        "transfer-encoding",
        "pic-operations",
    }
)
_SECURITY_TOKEN_HEADERS = ("x-ci-security-token", "x-cos-security-token")
_CLOCK_LEEWAY = 60  # the SDK starts the key time a minute early to absorb clock skew
_AUTH_FIELDS = (
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
)


@dataclass(frozen=True)
class Credentials:
    """A SecretId/SecretKey pair, with the session token when they are temporary (STS)."""

    secret_id: str
    secret_key: str = field(repr=False)
    token: str = field(default="", repr=False)


class SignatureInvalid(Exception):
    """A request's Authorization does not hold; ``code`` is the CI error code to answer with.

    Codes: ``InvalidAuthorization`` (malformed header), ``SecretidNotExist`` (unknown SecretId),
    ``SignatureExpired`` (outside its time window), ``SignatureDoesNotMatch`` (wrong signature
    or a signed header/parameter that the request does not carry).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def signed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of ``headers`` that the SDK puts into a signature."""
    return {
        name: value
        for name, value in headers.items()
        if (lower := name.lower()) in _SIGNED_HEADER_NAMES or lower.startswith(("x-cos-", "x-ci-"))
    }


def sign(
    creds: Credentials,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    now: int,
    expires: int = 10000,
) -> str:
    """The ``Authorization`` header value for a request, valid from ``now - 60`` for ``expires`` s.

    Every entry of ``params`` is signed; of ``headers``, those ``signed_headers`` picks. ``headers``
    must carry ``Host`` and, with temporary credentials, the security token header: a signature
    that does not cover what will be sent would only fail later, at CI.
    """
    chosen = signed_headers(headers)
    lowered = {name.lower(): value for name, value in chosen.items()}
    if "host" not in lowered:
        raise ValueError("headers must include Host: it is always signed")
    if creds.token and not any(lowered.get(h) == creds.token for h in _SECURITY_TOKEN_HEADERS):
        raise ValueError("temporary credentials: send the token as x-ci-security-token")
    key_time = f"{now - _CLOCK_LEEWAY};{now + expires}"
    encoded_params = _encode(params)
    encoded_headers = _encode(chosen)
    signature = _signature(
        creds.secret_key, key_time, key_time, method, path, encoded_params, encoded_headers
    )
    return (
        f"q-sign-algorithm=sha1&q-ak={creds.secret_id}"
        f"&q-sign-time={key_time}&q-key-time={key_time}"
        f"&q-header-list={';'.join(sorted(encoded_headers))}"
        f"&q-url-param-list={';'.join(sorted(encoded_params))}"
        f"&q-signature={signature}"
    )


def verify(
    authorization: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    lookup_key: Callable[[str], str | None],
    *,
    now: int,
) -> str:
    """Check a request's ``Authorization``; return its SecretId or raise ``SignatureInvalid``.

    ``path`` is the decoded request path, ``params`` the decoded query. The signature is recomputed
    over exactly the headers and parameters the Authorization lists, so unsigned extras (the SDK
    appends ``?cancel`` after signing) are ignored, while a listed one that is absent fails.
    """
    fields = _parse_authorization(authorization)
    if fields["q-sign-algorithm"] != "sha1":
        raise SignatureInvalid(
            "InvalidAuthorization", f"unsupported q-sign-algorithm {fields['q-sign-algorithm']!r}"
        )
    secret_id = fields["q-ak"]
    if not secret_id:
        raise SignatureInvalid("InvalidAuthorization", "q-ak is empty")
    windows = [_parse_window(fields[name], name) for name in ("q-sign-time", "q-key-time")]
    secret_key = lookup_key(secret_id)
    if secret_key is None:
        raise SignatureInvalid("SecretidNotExist", f"SecretId {secret_id} does not exist")
    for start, end in windows:
        if now < start:
            raise SignatureInvalid("SignatureExpired", "signature is not valid yet")
        if now > end:
            raise SignatureInvalid("SignatureExpired", "signature has expired")
    chosen_headers = _pick(_encode(headers), fields["q-header-list"], "header")
    chosen_params = _pick(_encode(params), fields["q-url-param-list"], "parameter")
    expected = _signature(
        secret_key,
        fields["q-key-time"],
        fields["q-sign-time"],
        method,
        path,
        chosen_params,
        chosen_headers,
    )
    if not hmac.compare_digest(expected, fields["q-signature"].lower()):
        raise SignatureInvalid("SignatureDoesNotMatch", "signature does not match the request")
    return secret_id


def _quote(text: str) -> str:
    return quote(text.encode("utf-8"), safe="-_.~")


def _encode(pairs: Mapping[str, str]) -> dict[str, str]:
    return {_quote(key).lower(): _quote(value) for key, value in pairs.items()}


def _signature(
    secret_key: str,
    key_time: str,
    sign_time: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    if not path.startswith("/"):
        path = "/" + path
    http_string = "\n".join([method.lower(), path, _join(params), _join(headers), ""])
    digest = hashlib.sha1(http_string.encode("utf-8")).hexdigest()
    string_to_sign = f"sha1\n{sign_time}\n{digest}\n"
    sign_key = _hmac_hex(secret_key, key_time)
    return _hmac_hex(sign_key, string_to_sign)


def _join(encoded: Mapping[str, str]) -> str:
    return "&".join(f"{key}={value}" for key, value in sorted(encoded.items()))


def _hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).hexdigest()


def _parse_authorization(authorization: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in authorization.strip().split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            raise SignatureInvalid("InvalidAuthorization", f"malformed field {name!r}")
        if name in fields:
            raise SignatureInvalid("InvalidAuthorization", f"{name} given twice")
        fields[name] = value
    missing = [name for name in _AUTH_FIELDS if name not in fields]
    if missing:
        raise SignatureInvalid("InvalidAuthorization", f"missing {', '.join(missing)}")
    return fields


def _parse_window(value: str, name: str) -> tuple[int, int]:
    start, sep, end = value.partition(";")
    if not (sep and start.isdigit() and end.isdigit()) or int(start) > int(end):
        raise SignatureInvalid("InvalidAuthorization", f"{name} must be '<start>;<end>'")
    return int(start), int(end)


def _pick(encoded: Mapping[str, str], listed: str, kind: str) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for name in filter(None, listed.split(";")):
        if name not in encoded:
            raise SignatureInvalid("SignatureDoesNotMatch", f"signed {kind} {name} is absent")
        chosen[name] = encoded[name]
    return chosen

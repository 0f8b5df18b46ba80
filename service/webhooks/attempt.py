"""One delivery attempt: sign, POST (no redirects, bounded time and answer), classify.

Outcomes, as webhook gateways classify them:

- 2xx: delivered;
- no answer (connection error, timeout), 5xx, 408, 409, 425 and 429: retry, honouring
  ``Retry-After``;
- any other status (other 4xx, and 3xx since redirects are not followed) and a refused
  destination: failed for good.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from service import __version__
from service.storage import Delivery
from service.webhooks import signing
from service.webhooks.ssrf import AddressPolicy, DestinationRefused

# Statuses worth another attempt besides 5xx: timeout, conflict, too early, too many requests.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
# Bytes of a receiver's answer read (for the error kept with the delivery); the rest is dropped.
MAX_ANSWER_BYTES = 1024
# Retry-After beyond a day is not believed.
MAX_RETRY_AFTER_SECONDS = 86_400.0
USER_AGENT = f"cirelay/{__version__} (webhooks)"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retryable: bool
    status: int | None
    error: str | None
    retry_after: float | None = None  # seconds the receiver asked us to wait


async def attempt(
    session: aiohttp.ClientSession,
    delivery: Delivery,
    *,
    keys: tuple[bytes, ...],
    policy: AddressPolicy,
    connect_timeout: float,
    attempt_timeout: float,
    now: float,
) -> Outcome:
    refused = policy.url_refusal(delivery.url)
    if refused is not None:
        return Outcome(False, False, None, f"destination {refused}")
    headers = {
        **signing.headers(keys, delivery.id, int(now), delivery.body),
        "Content-Type": delivery.content_type,
        "User-Agent": USER_AGENT,
    }
    try:
        async with session.post(
            delivery.url,
            data=delivery.body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=attempt_timeout, sock_connect=connect_timeout),
        ) as response:
            answer = await response.content.read(MAX_ANSWER_BYTES)
            status = response.status
            retry_after = _retry_after(response.headers.get("Retry-After"), now)
            location = response.headers.get("Location", "")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, DestinationRefused):
            return Outcome(False, False, None, f"destination refused: {exc.os_error}")
        return Outcome(False, True, None, f"cannot connect: {exc.os_error}")
    except TimeoutError:
        return Outcome(False, True, None, f"no answer within {attempt_timeout:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome(False, True, None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Outcome(True, False, status, None)
    text = answer.decode("utf-8", "replace").strip()
    if 300 <= status < 400:
        target = urlsplit(location).netloc or location
        return Outcome(False, False, status, f"HTTP {status}: redirect to {target!r} not followed")
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    error = f"HTTP {status}" + (f": {text[:200]}" if text else "")
    return Outcome(False, retryable, status, error, retry_after if retryable else None)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that ``Retry-After`` (seconds or an HTTP date) asks for."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)

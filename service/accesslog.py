"""The access log: one line per request, callback tokens redacted, and cheap.

aiohttp's default access logger formats an Apache-style line (time, referer, user agent) for every
request. This one writes what operations read (method, redacted path, status, duration) as a
stdlib record whose fields the JSON renderer keeps; ``CIRELAY_ACCESS_LOG=errors`` writes only the
answers of 400 and above, ``off`` none (the metrics count every request either way).
"""

from __future__ import annotations

from typing import ClassVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.redact import redact_path

# Record attributes the log formatter copies into the rendered line.
ACCESS_FIELDS = ("status", "duration_ms")


class AccessLog(AbstractAccessLogger):
    errors_only: ClassVar[bool] = False

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        status = response.status
        if self.errors_only and status < 400:
            return
        self.logger.info(
            "%s %s %s",
            request.method,
            redact_path(request.path),
            status,
            extra={"status": status, "duration_ms": round(time * 1000, 3)},
        )


class ErrorAccessLog(AccessLog):
    errors_only = True

"""The access log: one line per request, callback tokens redacted, and cheap.

aiohttp's default access logger formats an Apache-style line (time, referer, user agent) for every
request. This one writes what operations read (method, redacted path, status, duration) and the
request id; ``CIRELAY_ACCESS_LOG=errors`` writes only the answers of 400 and above, ``off`` none
(the metrics count every request either way).

With JSON logs (what a deployment runs) the line is rendered here, in the shape structlog's
renderer gives every other line, and written to the log stream directly: handing it to the stdlib
logger and structlog's formatter chain cost about a fifth of a whole callback's CPU. Console logs
(a terminal) go through the logger as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import ClassVar, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.redact import redact_path

# Record attributes the log formatter copies into the rendered line.
ACCESS_FIELDS = ("status", "duration_ms")
LOGGER = "aiohttp.access"


class JsonSink:
    """Where rendered access lines go: the log stream, under the log handler's lock (other
    threads log too), each line passed through the same redaction as every other line."""

    def __init__(
        self, stream: TextIO, lock: threading.RLock | None, scrub: Callable[[str], str]
    ) -> None:
        self._stream = stream
        self._lock = lock or threading.RLock()
        self.scrub = scrub

    def write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class AccessLog(AbstractAccessLogger):
    errors_only: ClassVar[bool] = False
    # Set by ``service.logging.configure_logging`` when lines are JSON; None: the stdlib path.
    sink: ClassVar[JsonSink | None] = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        status = response.status
        if self.errors_only and status < 400:
            return
        duration = round(time * 1000, 3)
        sink = AccessLog.sink
        if sink is None or not self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                "%s %s %s",
                request.method,
                redact_path(request.path),
                status,
                extra={"status": status, "duration_ms": duration},
            )
            return
        event = sink.scrub(f"{request.method} {redact_path(request.path)} {status}")
        # The id the middleware gave this request (absent when aiohttp answered on its own).
        request_id = response.headers.get("X-Request-Id")
        rid = f', "request_id": {encode_basestring(sink.scrub(request_id))}' if request_id else ""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        sink.write(
            f'{{"event": {encode_basestring(event)}{rid}, "level": "info", "logger": "{LOGGER}",'
            f' "timestamp": "{stamp}", "status": {status}, "duration_ms": {duration!r}}}\n'
        )


class ErrorAccessLog(AccessLog):
    errors_only = True

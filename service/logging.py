"""structlog configured once: JSON lines in production, console on a TTY, stdlib routed in."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from service.accesslog import ACCESS_FIELDS, AccessLog, JsonSink
from service.redact import REDACTED, redact_path
from service.settings import Settings

# Keys whose values never reach a log line even if a caller binds one by mistake: every setting
# marked secret, and the header that carries the API token.
SECRET_KEYS = frozenset(
    {f.name for f in dataclasses.fields(Settings) if f.metadata["secret"]} | {"authorization"}
)
# Secret values shorter than this are not searched for in text: they would match ordinary words
# (and the sandbox's well-known token, `sandbox`, is no secret).
_MIN_SECRET_LENGTH = 12


class Redactor:
    """The last processor before rendering: secret keys' values, callback tokens in any text
    (messages, paths, rendered tracebacks) and the configured secrets' values are replaced."""

    def __init__(self, settings: Settings) -> None:
        self._values = tuple(
            value
            for name in SECRET_KEYS
            if len(value := str(getattr(settings, name, ""))) >= _MIN_SECRET_LENGTH
        )

    def __call__(
        self, _: Any, __: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        for key in SECRET_KEYS.intersection(event):
            event[key] = REDACTED
        for key, value in event.items():
            if type(value) is str:
                event[key] = self.scrub(value)
        return event

    def scrub(self, text: str) -> str:
        text = redact_path(text)
        for secret in self._values:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


# Distinct events tracked; the least recently seen is forgotten beyond this.
_MAX_TRACKED = 1024
REPEATS_DROPPED = "repeats_dropped"


class RepeatLimiter(logging.Filter):
    """One line per (logger, level, event) and window for warnings and errors; the first line
    after the window carries ``repeats_dropped``, the number of lines it stands for.

    A flood (thousands of "out of system resource" a second) becomes a line per window that says
    how big the flood was. Info lines are per job or per request, and are never dropped. A filter
    on the handler, so stdlib records (aiohttp, asyncio) are limited as structlog's are."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()  # records may come from the Pulsar client's threads
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (written at, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._window <= 0 or record.levelno < logging.WARNING:
            return True
        # structlog's records carry their event dict; stdlib's their unformatted message.
        event = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
        key = (record.name, record.levelno, str(event))
        now = self._clock()
        with self._lock:
            written, dropped = self._seen.pop(key, (None, 0))
            if written is not None and now - written < self._window:
                self._seen[key] = (written, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > _MAX_TRACKED:
                del self._seen[next(iter(self._seen))]
        if dropped:
            if isinstance(record.msg, dict):
                record.msg[REPEATS_DROPPED] = dropped
            else:
                setattr(record, REPEATS_DROPPED, dropped)
        return True


def configure_logging(settings: Settings) -> None:
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    redactor = Redactor(settings)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            # Attributes of stdlib records (the access log's fields, the repeat count) kept.
            structlog.stdlib.ExtraAdder(allow=[REPEATS_DROPPED, *ACCESS_FIELDS]),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    AccessLog.sink = JsonSink(sys.stderr, handler.lock, redactor.scrub) if fmt == "json" else None
    handler.addFilter(RepeatLimiter(settings.log_repeat_window_seconds))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # The Pulsar C++ client logs every connection at INFO: keep its warnings, not its chatter.
    logging.getLogger("pulsar").setLevel(max(root.level, logging.WARNING))
    # At DEBUG aiosqlite logs every call with its SQL parameters: whole callback bodies, tokens.
    logging.getLogger("aiosqlite").setLevel(max(root.level, logging.INFO))

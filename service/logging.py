"""structlog configured once: JSON lines in production, console on a TTY, stdlib routed in."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from service.settings import Settings

# Never let a secret reach a log line even if a caller binds one by mistake.
_REDACTED_KEYS = frozenset(
    {"authorization", "secret_key", "ci_secret_key", "token", "api_token", "password"}
)


def _redact(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    for key in _REDACTED_KEYS.intersection(event):
        event[key] = "***"
    return event


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
        _redact,
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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=[REPEATS_DROPPED])],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimiter(settings.log_repeat_window_seconds))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # The Pulsar C++ client logs every connection at INFO: keep its warnings, not its chatter.
    logging.getLogger("pulsar").setLevel(max(root.level, logging.WARNING))

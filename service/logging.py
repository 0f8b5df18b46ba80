"""structlog configured once: JSON lines in production, console on a TTY, stdlib routed in."""

from __future__ import annotations

import logging
import sys
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
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # The Pulsar C++ client logs every connection at INFO: keep its warnings, not its chatter.
    logging.getLogger("pulsar").setLevel(max(root.level, logging.WARNING))

"""The repeat limiter: a flood of one warning becomes one line per window saying how many lines it
stands for; info lines and distinct events pass."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from service.logging import RepeatLimiter, configure_logging
from service.settings import Settings


def record(msg: object, level: int = logging.WARNING, name: str = "t") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_within_the_window_are_dropped_and_counted_on_the_next_line() -> None:
    now = [0.0]
    limiter = RepeatLimiter(10.0, clock=lambda: now[0])
    assert limiter.filter(record("socket.accept() out of system resource"))
    assert not any(
        limiter.filter(record("socket.accept() out of system resource")) for _ in range(500)
    )
    assert limiter.filter(record("another warning"))  # a different event is its own
    now[0] = 10.0
    later = record("socket.accept() out of system resource")
    assert limiter.filter(later)
    assert later.repeats_dropped == 500  # type: ignore[attr-defined]


def test_structlog_events_are_limited_by_event_name_whatever_their_fields() -> None:
    now = [0.0]
    limiter = RepeatLimiter(1.0, clock=lambda: now[0])
    assert limiter.filter(record({"event": "input_error", "path": "/a"}))
    assert not limiter.filter(record({"event": "input_error", "path": "/b"}))
    now[0] = 2.0
    later = record({"event": "input_error", "path": "/c"})
    assert limiter.filter(later)
    assert isinstance(later.msg, dict)
    assert later.msg["repeats_dropped"] == 1


def test_info_lines_and_a_zero_window_are_never_limited() -> None:
    limiter = RepeatLimiter(10.0, clock=lambda: 0.0)
    assert all(limiter.filter(record("job_enqueued", logging.INFO)) for _ in range(10))
    off = RepeatLimiter(0.0, clock=lambda: 0.0)
    assert all(off.filter(record("flood")) for _ in range(10))


def test_the_configured_chain_limits_stdlib_and_structlog_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings.load({"CIRELAY_LOG_FORMAT": "json"}))
    for _ in range(100):
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
        structlog.get_logger("t").warning("connection_evicted", limit=3)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "socket.accept() out of system resource",
        "connection_evicted",
    ]

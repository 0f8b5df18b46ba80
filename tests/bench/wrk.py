"""Reading wrk's report (``wrk --latency``): the figures the benchmarks print and compare."""

from __future__ import annotations

import re
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse(out: str) -> dict[str, Any]:
    """rps, requests, p50_ms, p99_ms, non_2xx and socket_errors from one wrk run's output."""

    def find(pattern: str) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return match.group(1)

    def ms(text: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if match is None:
            raise SystemExit(f"unexpected wrk latency {text!r}")
        value, unit = match.groups()
        return float(value) * _UNITS_MS[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(find(r"Requests/sec:\s+([\d.]+)")),
        "requests": int(find(r"(\d+) requests in")),
        # Anchored: "87.50%" in the thread stats must not pass for the 50th percentile.
        "p50_ms": ms(find(r"^\s+50%\s+(\S+)")),
        "p99_ms": ms(find(r"^\s+99%\s+(\S+)")),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import structlog

from service import __version__
from service.cli import main
from service.logging import configure_logging
from service.settings import Settings


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cirelay {__version__}"


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "serve" in capsys.readouterr().out


def test_missing_setting_stops_start_up_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CIRELAY_CI_SECRET_ID": "x"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "cirelay: configuration error: CIRELAY_API_TOKEN: is required "
        "(or run `cirelay serve --sandbox`)"
    ]


def test_malformed_setting_stops_start_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CIRELAY_PORT": "eighty"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "CIRELAY_PORT: must be an integer" in proc.stderr


def test_json_logs_route_stdlib_and_redact(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings.load({"CIRELAY_LOG_FORMAT": "json"}))
    structlog.get_logger("t").info("job_submitted", job_id="j1", authorization="q-sign-secret")
    logging.getLogger("aiohttp.access").warning("stdlib line")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "job_submitted"
    assert lines[0]["job_id"] == "j1"
    assert lines[0]["authorization"] == "[redacted]"
    assert lines[0]["level"] == "info"
    assert lines[1]["event"] == "stdlib line"
    assert lines[1]["logger"] == "aiohttp.access"

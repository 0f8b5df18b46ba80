"""schemathesis against a real `cirelay serve --sandbox`: no 5xx, and every answer true to the spec.

The run is driven by `tests/api/schemathesis.toml` (which checks, the callback token, no example
database) and a fixed seed, so CI sees the same generated requests on every run; the stateful phase
still meets fresh job ids, which only changes the ids it sends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.emulator.sandbox import SANDBOX_API_TOKEN
from tests.ports import free_port

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
PATHS_CONFIG = Path(__file__).with_name("schemathesis-paths.toml")
SPEC = json.loads((Path(__file__).resolve().parents[2] / "service" / "openapi.json").read_text())
# schemathesis leaves out GET /openapi.json, the document it was loaded from.
TESTED_OPERATIONS = sum(len(item) for item in SPEC["paths"].values()) - 1
# Operations with a path parameter (job id, callback token).
PATH_OPERATIONS = sum(len(item) for path, item in SPEC["paths"].items() if "{" in path)
SEED = 20240501
# Per operation and phase: about 1,000 requests in all, well under a minute on 2 cores.
MAX_EXAMPLES = 50
CALLBACK_TOKEN = "schemathesis-callback-token"
START_DEADLINE = 30.0
# A guard against a hung run, not a measure of speed.
RUN_TIMEOUT = 600.0
STOP_TIMEOUT = 30.0


def _environment(**settings: str) -> dict[str, str]:
    # Children see exactly the settings chosen here, never CIRELAY_* leaking from the outer shell,
    # and no proxy: every request of the run stays on loopback.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CIRELAY_") and not k.lower().endswith("_proxy")
    }
    env.update(settings)
    return env


# Straight to loopback, whatever proxy the outer shell names.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _counted(url: str) -> dict[str, float]:
    """Totals from /metrics: jobs enqueued over HTTP, HTTP callbacks stored and refused."""
    with _LOOPBACK.open(f"{url}/metrics", timeout=10.0) as resp:
        text = resp.read().decode()
    wanted = {
        ("cirelay_jobs_enqueued_total", "via"): "jobs_enqueued",
        ("cirelay_events_received_total", "source"): "callback_events_stored",
        ("cirelay_events_rejected_total", "source"): "callbacks_refused",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for (name, label), key in wanted.items():
                if sample.name == name and sample.labels.get(label) == "http":
                    totals[key] += sample.value
    return totals


def _healthy(url: str) -> bool:
    try:
        with _LOOPBACK.open(f"{url}/healthz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _tail(path: Path, size: int = 8000) -> str:
    return path.read_text(errors="replace")[-size:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, log file) of a running `cirelay serve --sandbox` on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = _environment(
        CIRELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'cirelay.db'}",
        CIRELAY_LOG_FORMAT="json",
        CIRELAY_CALLBACK_TOKEN=CALLBACK_TOKEN,
    )
    # `python -m service` is the `cirelay` command, under this interpreter.
    argv = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cirelay serve --sandbox did not come up:\n{_tail(log)}")
            time.sleep(0.05)  # a process coming up offers nothing to wait on
        yield url, log
    finally:
        _stop(proc)


def _schemathesis(url: str, log: Path, config: Path, cwd: Path, *options: str) -> str:
    """Run schemathesis against ``url``'s spec; its output. Fails the test if it found a fault."""
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {SANDBOX_API_TOKEN}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--no-color",
        *options,
    ]
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=_environment(CIRELAY_CALLBACK_TOKEN=CALLBACK_TOKEN),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n--- cirelay serve log (tail) ---\n{_tail(log)}"
    return output


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_spec(
    sandbox: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = sandbox
    output = _schemathesis(url, log, CONFIG, tmp_path)
    # Not a silently hollow run: every documented operation was tested ...
    assert f"Tested: {TESTED_OPERATIONS}" in output, output
    # ... jobs were created for the stateful phase to follow, and generated callback bodies got
    # past the token to the parser: some stored, most refused.
    counted = _counted(url)
    assert all(total > 0 for total in counted.values()), counted


# The job ids and the callback token as schemathesis makes them; tests/api/test_input_faults.py
# adds hypothesis's wider text (non-ASCII tokens) and raw bytes.
def test_arbitrary_path_parameters_are_never_a_server_error(
    sandbox: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = sandbox
    output = _schemathesis(url, log, PATHS_CONFIG, tmp_path, "--include-path-regex", r"\{")
    assert f"Tested: {PATH_OPERATIONS}" in output, output

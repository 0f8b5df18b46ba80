"""Where a real `cirelay serve --sandbox` listens: loopback unless `--host` says otherwise, and
with CIRELAY_ADMIN_PORT, metrics and probes on the management listener instead of the main port."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import _environment
from tests.ports import free_port

pytestmark = pytest.mark.slow

START_DEADLINE = 30.0
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status(url: str) -> int:
    try:
        with _LOOPBACK.open(url, timeout=10.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def listening_urls(log: Path) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["url"] for line in lines if line["event"] == "listening"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    port, admin = free_port(), free_port()
    log = tmp_path / "serve.log"
    env = _environment(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_ADMIN_PORT": str(admin),
        }
    )
    argv = [sys.executable, "-m", "service", "serve", "--sandbox", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while len(listening_urls(log)) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # a process coming up offers nothing to wait on
        yield port, admin, log
    finally:
        proc.terminate()
        proc.wait(timeout=START_DEADLINE)


def test_the_sandbox_listens_on_loopback_and_probes_move_to_the_admin_port(
    serve: tuple[int, int, Path],
) -> None:
    port, admin, log = serve
    assert listening_urls(log) == [f"http://127.0.0.1:{port}", f"http://0.0.0.0:{admin}"]
    main_url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    assert status(f"{admin_url}/metrics") == 200
    assert status(f"{admin_url}/readyz") == 200
    assert status(f"{admin_url}/healthz") == 200
    assert status(f"{main_url}/healthz") == 200
    assert status(f"{main_url}/metrics") == 404
    assert status(f"{main_url}/readyz") == 404
    assert status(f"{admin_url}/openapi.json") == 404  # the API is not on the management port

"""Connection exhaustion against a real `cirelay serve --sandbox` under a modest descriptor limit:
hundreds of idle connections neither lock out /healthz nor flood the log."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.procs import _environment
from tests.ports import free_port

pytestmark = pytest.mark.slow

FD_LIMIT = 512
IDLE_CONNECTIONS = 800
START_DEADLINE = 30.0
# A probe's patience, as a Kubernetes probe's timeoutSeconds; not a measure of speed.
PROBE_TIMEOUT = 5.0
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _probe(url: str) -> int:
    with _LOOPBACK.open(f"{url}/healthz", timeout=PROBE_TIMEOUT) as resp:
        return int(resp.status)


def test_idle_connections_do_not_lock_out_the_probe_or_flood_the_log(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = _environment(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_MAX_CONNECTIONS": "100",
        }
    )
    argv = [sys.executable, "-m", "service", "serve", "--sandbox", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limit_descriptors
        )
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                assert _probe(url) == 200
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)  # a process coming up offers nothing to wait on
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(5):
            assert _probe(url) == 200
        assert proc.poll() is None
    finally:
        for conn in idle:
            conn.close()
        proc.terminate()
        proc.wait(timeout=START_DEADLINE)
    lines = log.read_text().splitlines()
    assert not [line for line in lines if "out of system resource" in line]
    # One line per evicted connection at most, within the repeat window: one.
    assert sum("connection_evicted" in line for line in lines) == 1

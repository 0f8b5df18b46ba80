"""pytest plugin: one real Apache Pulsar standalone broker per test run (via
tests/pulsar/standalone.sh).

The session fixture ``pulsar_broker`` starts the broker the first time a test asks for it (a run
without Pulsar tests never pays for it) and stops it, deleting its data, when the run ends. If the
test process dies instead, the script's watchdog stops the broker. Tests that use the broker are
marked ``pulsar`` automatically, so ``-m "not pulsar"`` leaves them out.

Set ``CIRELAY_TEST_PULSAR_ENV`` to the ``pulsar.env`` of a broker already running (``standalone.sh
start DIR`` writes ``DIR/pulsar.env``) to reuse it across runs while developing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent / "pulsar" / "standalone.sh"
REUSE_ENV = "CIRELAY_TEST_PULSAR_ENV"


class BrokerScriptError(RuntimeError):
    """standalone.sh failed; the message carries its output (with the broker's log tail)."""


def run_script(command: str, directory: Path, *, owned: bool = True) -> None:
    """``standalone.sh COMMAND DIR``. A broker this run ``owned`` (started) is tied to this
    process by the script's watchdog; a reused one must outlive the run."""
    env = dict(os.environ)
    env.pop("CIRELAY_PULSAR_WATCH_PID", None)
    if owned:
        env["CIRELAY_PULSAR_WATCH_PID"] = str(os.getpid())
    done = subprocess.run(
        [str(SCRIPT), command, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BrokerScriptError(
            f"standalone.sh {command} {directory} exited {done.returncode}:\n{done.stderr}"
        )


def parse_env_file(text: str) -> dict[str, str]:
    """The KEY=VALUE lines of a pulsar.env file."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(secret: bytes, role: str) -> str:
    """An HS256 JWT with ``sub`` = role: what the broker's token provider accepts."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps({"sub": role}, separators=(",", ":")).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


@dataclass(frozen=True)
class PulsarBroker:
    """A running broker: ``url`` for clients, ``admin_url`` for REST, ``token`` of the superuser."""

    url: str
    admin_url: str
    token: str
    dir: Path
    secret_key_file: Path
    log_file: Path
    owned: bool = True  # started by this test run (not reused through CIRELAY_TEST_PULSAR_ENV)

    @classmethod
    def from_env_file(cls, path: Path, *, owned: bool = True) -> PulsarBroker:
        env = parse_env_file(path.read_text())
        return cls(
            url=env["PULSAR_URL"],
            admin_url=env["PULSAR_ADMIN_URL"],
            token=env["PULSAR_TOKEN"],
            dir=Path(env["PULSAR_DIR"]),
            secret_key_file=Path(env["PULSAR_SECRET_KEY_FILE"]),
            log_file=Path(env["PULSAR_LOG"]),
            owned=owned,
        )

    def restart(self) -> None:
        """Graceful stop and start on the same ports and data; returns once it serves again.
        Blocking (about 12 s): from async tests call it through ``asyncio.to_thread``."""
        run_script("restart", self.dir, owned=self.owned)

    def halt(self) -> None:
        """Graceful stop that keeps ports and data, for tests of the time the broker is away."""
        run_script("halt", self.dir, owned=self.owned)

    def resume(self) -> None:
        """Start a halted broker again; returns once it serves."""
        run_script("resume", self.dir, owned=self.owned)

    def token_for(self, role: str) -> str:
        """A valid token for another role (authorization is on: it has no permissions yet)."""
        return hs256_token(self.secret_key_file.read_bytes(), role)

    def admin(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """One admin REST call as the superuser (or ``token``'s role); the JSON reply or None.
        Raises urllib.error.HTTPError on a non-2xx status."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.admin_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token if token is None else token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def admin_get(self, path: str) -> Any:
        return self.admin("GET", path)

    def admin_put(self, path: str, body: Any = None) -> Any:
        return self.admin("PUT", path, body)

    def admin_post(self, path: str, body: Any = None) -> Any:
        return self.admin("POST", path, body)


def reusable_env_file() -> Path | None:
    named = os.environ.get(REUSE_ENV)
    if named and Path(named).is_file():
        return Path(named)
    return None


@pytest.fixture(scope="session")
def pulsar_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulsarBroker]:
    reused = reusable_env_file()
    if reused is not None:
        yield PulsarBroker.from_env_file(reused, owned=False)
        return
    directory = tmp_path_factory.mktemp("pulsar")
    run_script("start", directory)
    try:
        yield PulsarBroker.from_env_file(directory / "pulsar.env")
    finally:
        run_script("stop", directory)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pulsar_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pulsar)

"""Real `cirelay serve` and `cirelay emulator` processes on loopback ports, for crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from service.ci.client import CIClient
from service.ci.signing import Credentials
from tests.ports import free_port
from tests.queue import rig
from tests.queue.rig import SECRET_ID, SECRET_KEY
from tests.queue.samples import BUCKET, REGION

API_TOKEN = "e2e-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CALLBACK_SECRET = "e2e-callback-secret"
START_DEADLINE = 30.0


def _environment(settings: Mapping[str, str]) -> dict[str, str]:
    # The child gets exactly the settings a test chose, never ones leaking from the outer shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env.update({"CIRELAY_LOG_FORMAT": "json", **settings})
    return env


@dataclass
class Process:
    name: str
    port: int
    log: Path
    proc: asyncio.subprocess.Process | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready_path: str) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + START_DEADLINE
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    break
                try:
                    async with session.get(self.url + ready_path) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # a process coming up offers nothing to wait on
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-4000:]}")

    async def kill(self) -> None:
        """``kill -9``: no cleanup of any kind runs."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def terminate(self) -> int:
        """SIGTERM, then the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout=60)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def emulator(tmp: Path, **settings: str) -> Process:
    port = free_port()
    return Process(
        name="emulator",
        port=port,
        log=tmp / "emulator.log",
        argv=[sys.executable, "-m", "service", "emulator", "--host", "127.0.0.1",
              "--port", str(port)],
        env=_environment(
            {
                "CIRELAY_EMULATOR_CREDENTIALS": f"{SECRET_ID}:{SECRET_KEY}",
                "CIRELAY_EMULATOR_JOB_SECONDS": "0.05",
                **settings,
            }
        ),
    )


def service(tmp: Path, emulator_url: str, **settings: str) -> Process:
    port = free_port()
    return Process(
        name="service",
        port=port,
        log=tmp / "service.log",
        argv=[sys.executable, "-m", "service", "serve", "--host", "127.0.0.1",
              "--port", str(port)],
        env=_environment(
            {
                "CIRELAY_DATABASE_URL": f"sqlite:///{tmp / 'cirelay.db'}",
                "CIRELAY_API_TOKEN": API_TOKEN,
                "CIRELAY_CALLBACK_SECRET": CALLBACK_SECRET,
                "CIRELAY_CI_ENDPOINT": emulator_url,
                "CIRELAY_CI_SECRET_ID": SECRET_ID,
                "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
                "CIRELAY_CI_BUCKET": BUCKET,
                "CIRELAY_CI_REGION": REGION,
                "CIRELAY_LEASE_SECONDS": "1",
                "CIRELAY_CI_TIMEOUT_SECONDS": "1",
                "CIRELAY_POLL_INTERVAL_SECONDS": "0.1",
                "CIRELAY_RETRY_BASE_SECONDS": "0.05",
                "CIRELAY_RETRY_CAP_SECONDS": "0.5",
                "CIRELAY_CI_RATE_LIMIT": "200",
                **settings,
            }
        ),
    )


async def created_at_ci(session: aiohttp.ClientSession, emulator_url: str) -> int:
    stats = await emulator_stats(session, emulator_url)
    return sum(int(n) for n in stats["batches_created"].values())


async def names_at_ci(session: aiohttp.ClientSession, emulator_url: str) -> list[str]:
    """Every batch job name the emulator holds, read through CI's list call."""
    return await rig.names_at_ci(
        CIClient(session, Credentials(SECRET_ID, SECRET_KEY), endpoint=emulator_url)
    )


async def emulator_stats(session: aiohttp.ClientSession, emulator_url: str) -> dict[str, Any]:
    async with session.get(emulator_url + "/_emulator/stats") as resp:
        result: dict[str, Any] = await resp.json()
    return result


async def list_jobs(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every job the service holds, through its keyset-paginated list."""
    jobs: list[dict[str, Any]] = []
    params = {"limit": "200"}
    while True:
        async with session.get(url + "/v1/jobs", params=params, headers=AUTH) as resp:
            page = await resp.json()
        jobs += page["jobs"]
        if page["next_cursor"] is None:
            return jobs
        params = {"limit": "200", "cursor": page["next_cursor"]}


async def wait_all_submitted(
    session: aiohttp.ClientSession, url: str, expected: int
) -> list[dict[str, Any]]:
    """Poll the service (another process: nothing to await) until no job is left queued."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = await list_jobs(session, url)
        if len(jobs) >= expected and all(j["state"] != "queued" for j in jobs):
            return jobs
        await asyncio.sleep(0.1)
    raise AssertionError(f"jobs still queued: {[j['id'] for j in jobs if j['state'] == 'queued']}")

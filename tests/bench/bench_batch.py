"""Benchmark: one batch of 1,000, 10,000 and 100,000 objects through the emulator and the service.

    python -m tests.bench.bench_batch [--sizes 1000,10000,100000] [--workers 250]
                                      [--job-seconds 0.5] [--reconcile-seconds 2]
                                      [--steady-seconds 0] [--postgres URL]

For each size, a ``cirelay emulator`` process expands one Prefix into that many media jobs (each
runs ``--job-seconds`` on ``--workers`` workers and calls back by URL), and a ``cirelay serve``
process on a fresh SQLite file (or, with ``--postgres`` and the URL of a server's database, a
fresh database created on that server) takes the job, submits it, ingests every callback and
reconciles every ``--reconcile-seconds``. Reported, from the service's own metrics and files:

- CI read calls (batch GET, media job list and lookups) per 100 media jobs, and the passes made;
- the mean time of a reconcile pass;
- the service's and the emulator's peak RSS (``VmHWM``);
- the time from the batch's end at the emulator (when its last media job ended) to the
  ``BatchFinish`` event (its ``received_at`` minus its ``ended_at``; CI's times are to the second);
- the database's size (SQLite: file, WAL and shared memory; PostgreSQL: ``pg_database_size``).

``--steady-seconds S`` adds a run with retention on (``CIRELAY_RETENTION_DAYS`` of 20 s): a
100-object job every second for S seconds, and the database's size every 10 s, which should level
off once the first jobs pass the retention period.

A benchmark, never a test: nothing here asserts anything. Pin nothing: the emulator and the
service each get what the machine gives them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.ports import free_port

API_TOKEN = "bench-token"
SECRET_ID = "AKIDbenchbatch"
SECRET_KEY = "bench-batch-secret"
BUCKET = "media-1250000000"
REGION = "ap-guangzhou"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
READ_CALLS = ("get", "list_media_jobs", "get_media_jobs")
_SAMPLE = re.compile(r'^cirelay_ci_requests_total\{operation="([^"]+)",status="([^"]+)"\} (\S+)$')


def _request(name: str) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "Job",
        "Input": {"Prefix": "in/"},
        "Operation": {
            "Tag": "Transcode",
            "QueueId": "p893bcda225bf4945a378da6662e81a89",
            "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
            "Output": {
                "Region": REGION,
                "Bucket": BUCKET,
                "Object": "out/${InventoryTriggerJobId}/${InputName}.mp4",
            },
        },
    }


def _wait_port(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{what} did not start")


@contextmanager
def _process(args: list[str], env: dict[str, str], port: int, what: str) -> Iterator[int]:
    """Run ``python -m service <args>`` until the block ends; yields its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(proc, port, what)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Database:
    """Where a run's service keeps its tables: a fresh SQLite file, or a fresh database on the
    PostgreSQL server ``--postgres`` names."""

    def __init__(self, workdir: Path, postgres: str, name: str) -> None:
        self._postgres = postgres
        self._name = name
        self._file = workdir / f"{name}.db"

    @property
    def url(self) -> str:
        if not self._postgres:
            return f"sqlite:///{self._file}"
        return f"{self._postgres.rsplit('/', 1)[0]}/{self._name}"

    async def create(self) -> None:
        if self._postgres:
            conn = await asyncpg.connect(self._postgres)
            try:
                await conn.execute(f'CREATE DATABASE "{self._name}"')
            finally:
                await conn.close()

    async def mib(self) -> float:
        if not self._postgres:
            files = [self._file, Path(f"{self._file}-wal"), Path(f"{self._file}-shm")]
            return sum(f.stat().st_size for f in files if f.exists()) / 2**20
        conn = await asyncpg.connect(self.url)
        try:
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        return float(size) / 2**20


@contextmanager
def _stack(
    db: Database, objects: int, args: argparse.Namespace, **service_env: str
) -> Iterator[tuple[str, int, int]]:
    """The emulator and the service on fresh ports and ``db``: (service url, service pid,
    emulator pid)."""
    emulator_port, service_port = free_port(), free_port()
    emulator_env = {
        "CIRELAY_LOG_LEVEL": "warning",
        "CIRELAY_EMULATOR_CREDENTIALS": f"{SECRET_ID}:{SECRET_KEY}",
        "CIRELAY_EMULATOR_OBJECTS_PER_PREFIX": str(objects),
        "CIRELAY_EMULATOR_JOB_SECONDS": str(args.job_seconds),
        "CIRELAY_EMULATOR_WORKERS": str(args.workers),
    }
    env = {
        "CIRELAY_LOG_LEVEL": "warning",
        "CIRELAY_DATABASE_URL": db.url,
        "CIRELAY_API_TOKEN": API_TOKEN,
        "CIRELAY_CALLBACK_SECRET": "bench-batch-callback-secret",
        "CIRELAY_PUBLIC_URL": f"http://127.0.0.1:{service_port}",
        "CIRELAY_CI_ENDPOINT": f"http://127.0.0.1:{emulator_port}",
        "CIRELAY_CI_SECRET_ID": SECRET_ID,
        "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
        "CIRELAY_CI_BUCKET": BUCKET,
        "CIRELAY_CI_REGION": REGION,
        "CIRELAY_RECONCILE_SECONDS": str(args.reconcile_seconds),
        **service_env,
    }
    emulator = ["emulator", "--host", "127.0.0.1", "--port", str(emulator_port)]
    with (
        _process(emulator, emulator_env, emulator_port, "emulator") as emulator_pid,
        _process(["serve", "--port", str(service_port)], env, service_port, "service") as pid,
    ):
        yield f"http://127.0.0.1:{service_port}", pid, emulator_pid


async def _submit(session: aiohttp.ClientSession, url: str, name: str) -> str:
    async with session.post(f"{url}/v1/jobs", json={"Request": _request(name)}) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise SystemExit(f"submit: {resp.status} {body}")
        return str(body["id"])


async def _wait_finished(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    while True:
        async with session.get(f"{url}/v1/jobs/{job_id}") as resp:
            job: dict[str, Any] = await resp.json()
        if job["state"] in ("succeeded", "failed", "cancelled", "dead"):
            return job
        await asyncio.sleep(0.5)


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            operation = match.group(1)
            found[operation] = found.get(operation, 0.0) + float(match.group(3))
        elif line.startswith(
            ("cirelay_reconcile_pass_seconds_sum", "cirelay_reconcile_pass_seconds_count")
        ):
            name, value = line.split(" ")
            found[name] = float(value)
    return found


async def _batch_finish(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    async with session.get(
        f"{url}/v1/events", params={"job_id": job_id, "type": "BatchFinish"}
    ) as resp:
        [event] = (await resp.json())["events"]
    return dict(event)


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    return kib / 1024


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def one_batch(workdir: Path, objects: int, args: argparse.Namespace) -> dict[str, Any]:
    db = Database(workdir, args.postgres, f"bench_batch_{objects}_{time.time_ns()}")
    await db.create()
    with _stack(db, objects, args) as (url, pid, emulator_pid):
        async with aiohttp.ClientSession(headers=AUTH) as session:
            started = time.monotonic()
            job_id = await _submit(session, url, f"bench-{objects}")
            job = await _wait_finished(session, url, job_id)
            elapsed = time.monotonic() - started
            metrics = await _metrics(session, url)
            finish = await _batch_finish(session, url, job_id)
            rss = _peak_rss_mib(pid)
            emulator_rss = _peak_rss_mib(emulator_pid)
    db_mib = await db.mib()  # once the service has stopped (SQLite: its WAL checkpointed)
    reads = sum(metrics.get(op, 0.0) for op in READ_CALLS)
    passes = metrics.get("cirelay_reconcile_pass_seconds_count", 0.0)
    return {
        "objects": objects,
        "state": job["state"],
        "events": job["events_count"],
        "seconds": round(elapsed, 1),
        "ci_reads": {op: metrics.get(op, 0.0) for op in READ_CALLS},
        "ci_reads_per_100": round(100 * reads / objects, 2),
        "passes": passes,
        "pass_mean_ms": round(
            1000 * metrics.get("cirelay_reconcile_pass_seconds_sum", 0.0) / max(passes, 1), 1
        ),
        "peak_rss_mib": round(rss, 1),
        "emulator_peak_rss_mib": round(emulator_rss, 1),
        "end_to_batch_finish_s": round(
            _epoch(finish["received_at"]) - _epoch(finish["ended_at"]), 1
        ),
        "backend": "postgres" if args.postgres else "sqlite",
        "db_mib": round(db_mib, 1),
    }


async def steady(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A 100-object job a second with retention at 20 s: the database's size over time."""
    retention_days = 20 / 86_400
    sizes: list[float] = []
    db = Database(workdir, args.postgres, f"bench_steady_{time.time_ns()}")
    await db.create()
    with _stack(db, 100, args, CIRELAY_RETENTION_DAYS=str(retention_days)) as (url, _, _):
        async with aiohttp.ClientSession(headers=AUTH) as session:
            started = time.monotonic()
            n = 0
            while (elapsed := time.monotonic() - started) < args.steady_seconds:
                await _submit(session, url, f"steady-{n}")
                n += 1
                if n % 10 == 0:
                    sizes.append(round(await db.mib(), 2))
                await asyncio.sleep(max(0.0, n - (time.monotonic() - started)))
            metrics = await _metrics(session, url)
    return {
        "jobs": n,
        "retention_seconds": 20,
        "db_mib_every_10s": sizes,
        "ci_reads": {op: metrics.get(op, 0.0) for op in READ_CALLS},
        "seconds": round(elapsed, 1),
    }


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            print(json.dumps(await one_batch(workdir, size, args)), flush=True)
        if args.steady_seconds:
            print(json.dumps({"steady": await steady(workdir, args)}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--job-seconds", type=float, default=0.5)
    parser.add_argument("--reconcile-seconds", type=float, default=2.0)
    parser.add_argument("--steady-seconds", type=float, default=0.0)
    parser.add_argument(
        "--postgres", default="", help="a PostgreSQL database URL on the server to run against"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

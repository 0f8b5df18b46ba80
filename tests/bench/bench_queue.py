"""Benchmark: intake, submission and claim cost, each against a baseline measured in the same run.

    python -m tests.bench.bench_queue [--seconds 10] [--connections 16] [--jobs 2000]
                                      [--sizes 1000,10000,100000] [--claims 500]

1. Intake (`POST /v1/jobs`): wrk (pinned to core 1) posts the same valid JSON Request to
   - bare: an aiohttp app whose one handler reads the body and answers 202 with a small JSON;
   - cirelay: the real service app (middleware, bearer auth, parse, full validation, durable
     insert into the SQLite queue, metrics) with its submitter off, on a fresh database file;
   each server alone on core 0, neither writing access logs. Ratio = cirelay / bare.
2. Submission (jobs/s to CI): the emulator (no latency, no faults) runs on core 1; on core 0,
   - baseline: the CI client alone, ``workers`` concurrent loops calling create;
   - cirelay: a burst-mode Submitter draining a queue of the same number of jobs (claim, rate
     limiter with a limit far above the rate reached, in-doubt mark, create, record).
   Ratio = submitter / bare client.
3. Claim cost as the queue grows: for 1k, 10k and 100k queued jobs (random JobLevel 0-2), the mean
   time of ``claim`` (each claimed job then recorded as submitted, as every job is), against a
   plain indexed ``SELECT`` of one job by id through the same connection, and against itself at
   1k. At most half of each queue is claimed, so it stays near its nominal size.

A benchmark, never a test: nothing here asserts timings. Needs wrk and taskset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.bench import wrk
from tests.ports import free_port

SERVER_CORE = 0
LOAD_CORE = 1
API_TOKEN = "bench-token"
SECRET_ID = "AKIDbench"
SECRET_KEY = "bench-secret-key"

LUA = r"""
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end
"""


def _wait_port(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 30
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


def _settings(workdir: Path, **changes: Any) -> Any:
    from service.settings import Settings
    from tests.queue.samples import BUCKET, REGION

    return Settings.load(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}",
            "CIRELAY_API_TOKEN": API_TOKEN,
            "CIRELAY_LOG_LEVEL": "warning",
            "CIRELAY_CI_BUCKET": BUCKET,
            "CIRELAY_CI_REGION": REGION,
            "CIRELAY_CI_SECRET_ID": SECRET_ID,
            "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
        }
    ).replace(**changes)


# --- 1. intake ----------------------------------------------------------------------------------


def _bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": uuid.uuid4().hex, "state": "queued"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/jobs", handler)
    return app


def _serve(kind: str, port: int, workdir: Path) -> None:
    from service.app import create_app
    from service.logging import configure_logging

    os.sched_setaffinity(0, {SERVER_CORE})
    settings = _settings(workdir, submitter_enabled=False)
    configure_logging(settings)
    app = _bare_app() if kind == "bare" else create_app(settings)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _wrk(url: str, seconds: float, connections: int, workdir: Path) -> dict[str, Any]:
    from tests.queue.samples import request_json

    script = workdir / "intake.lua"
    script.write_text(LUA)
    body = workdir / "request.json"
    body.write_bytes(request_json("bench", level=1))
    cmd = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(body),
        API_TOKEN,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return wrk.parse(out)


def bench_intake(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in ("bare", "cirelay"):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_queue",
                "--serve",
                kind,
                "--port",
                str(port),
                "--workdir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            _wait_port(proc, port, kind)
            url = f"http://127.0.0.1:{port}/v1/jobs"
            _wrk(url, args.warmup, args.connections, workdir)
            results[kind] = _wrk(url, args.seconds, args.connections, workdir)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        r = results[kind]
        print(
            f"intake   {kind:8} {r['rps']:8.0f} jobs/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}",
            flush=True,
        )
    results["ratio"] = round(results["cirelay"]["rps"] / results["bare"]["rps"], 3)
    print(f"intake   ratio cirelay/bare: {results['ratio']:.3f}", flush=True)
    return results


# --- 2. submission ------------------------------------------------------------------------------


async def _submission(args: argparse.Namespace, workdir: Path, emulator_url: str) -> dict[str, Any]:
    from service.ci.client import CIClient
    from service.ci.signing import Credentials
    from service.db import Database
    from service.intake import Target, enqueue
    from service.metrics import Metrics
    from service.queue import SQLiteJobQueue
    from service.ratelimit import RateLimiter
    from service.request import parse_request
    from service.submitter import Submitter
    from tests.queue.samples import BUCKET, REGION, request_json

    settings = _settings(workdir, ci_endpoint=emulator_url, ci_rate_limit=1e6)
    batch = parse_request(request_json("bench", level=1))
    async with aiohttp.ClientSession() as session:
        ci = CIClient(session, Credentials(SECRET_ID, SECRET_KEY), endpoint=emulator_url)

        # Baseline: the client alone, as many concurrent callers as the submitter has workers.
        body = batch.to_xml()
        remaining = args.jobs

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await ci.create(BUCKET, REGION, body)

        for _ in range(50):  # warm the connection pool and both processes
            await ci.create(BUCKET, REGION, body)
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(settings.workers)))
        bare = args.jobs / (time.perf_counter() - started)

        # The database thread must be closed on every path, or the process never exits.
        db = await Database.open(settings.sqlite_path)
        try:
            queue = await SQLiteJobQueue.open(db)
            for _ in range(args.jobs):
                await enqueue(queue, batch, Target(BUCKET, REGION), via="http")
            submitter = Submitter(
                queue,
                ci,
                RateLimiter(settings.ci_rate_limit, settings.ci_concurrency),
                settings,
                Metrics(),
            )
            started = time.perf_counter()
            handled = await submitter.run_burst()
            ours = handled / (time.perf_counter() - started)
            depth = await queue.depth_by_state()
        finally:
            await db.close()
    if depth["submitted"] != args.jobs:
        raise SystemExit(f"submission incomplete: {depth}")
    return {
        "bare_client": round(bare, 1),
        "cirelay": round(ours, 1),
        "ratio": round(ours / bare, 3),
    }


def bench_submission(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env.update(
        CIRELAY_EMULATOR_CREDENTIALS=f"{SECRET_ID}:{SECRET_KEY}",
        CIRELAY_EMULATOR_JOB_SECONDS="3600",  # media jobs stay parked: measure the API only
        CIRELAY_LOG_LEVEL="warning",
    )
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            sys.executable,
            "-m",
            "service",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(proc, port, "emulator")
        os.sched_setaffinity(0, {SERVER_CORE})
        result = asyncio.run(_submission(args, workdir, f"http://127.0.0.1:{port}"))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        proc.terminate()
        proc.wait(timeout=30)
    print(
        f"submit   bare client {result['bare_client']:8.1f} jobs/s  "
        f"cirelay {result['cirelay']:8.1f} jobs/s  ratio {result['ratio']:.3f}",
        flush=True,
    )
    return result


# --- 3. claim cost ------------------------------------------------------------------------------


async def _fill(db: Any, size: int) -> list[str]:
    """Insert ``size`` queued jobs in one transaction (the schema's own columns)."""
    rng = random.Random(size)
    ids = [uuid.uuid4().hex for _ in range(size)]
    now = time.time()
    request = json.dumps({"Name": "bench"})
    rows = [
        (
            job_id,
            "media-1250000000",
            "ap-chongqing",
            "Transcode",
            rng.randint(0, 2),
            request,
            f"bench-{job_id[:16]}",
            "",
            "http",
            now + i * 1e-6,
            now + i * 1e-6,
        )
        for i, job_id in enumerate(ids)
    ]
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO jobs (id, state, bucket, region, tag, job_level, request, submit_name,"
            " caller_callback, via, created_at, available_at)"
            " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return ids


async def _timed(count: int, step: Callable[[int], Any]) -> float:
    started = time.perf_counter()
    for i in range(count):
        await step(i)
    return (time.perf_counter() - started) / count


async def _claim_cost(size: int, claims: int, workdir: Path) -> dict[str, float]:
    from service.db import Database
    from service.queue import SQLiteJobQueue

    # The database thread must be closed on every path, or the process never exits.
    db = await Database.open(str(workdir / f"claims-{size}.db"))
    try:
        queue = await SQLiteJobQueue.open(db)
        ids = await _fill(db, size)
        rng = random.Random(1)
        claiming = 0.0

        async def select(_: int) -> None:
            async with db.exclusive() as conn:
                cur = await conn.execute("SELECT * FROM jobs WHERE id = ?", (rng.choice(ids),))
                await cur.fetchone()

        async def cycle(i: int) -> None:
            nonlocal claiming
            started = time.perf_counter()
            job = await queue.claim("bench", lease_seconds=30, now=time.time())
            claiming += time.perf_counter() - started
            if job is None:
                raise SystemExit("queue drained: use fewer --claims")
            await queue.record_submitted(job.id, "bench", f"ci-{i}", now=time.time())

        await _timed(200, select)  # warm the page cache for both
        select_s = await _timed(claims, select)
        cycle_s = await _timed(claims, cycle)
    finally:
        await db.close()
    return {
        "select_us": select_s * 1e6,
        "claim_us": claiming / claims * 1e6,
        "claim_record_us": cycle_s * 1e6,
    }


def bench_claims(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    first: float | None = None
    for size in (int(s) for s in args.sizes.split(",")):
        # At most half the queue is claimed, so it stays near its nominal size throughout.
        r = asyncio.run(_claim_cost(size, min(args.claims, size // 2), workdir))
        first = first or r["claim_us"]
        r["vs_select"] = round(r["claim_us"] / r["select_us"], 2)
        r["vs_smallest"] = round(r["claim_us"] / first, 2)
        results[str(size)] = r
        print(
            f"claim    {size:>7} queued  claim {r['claim_us']:5.0f} us  "
            f"(+record {r['claim_record_us']:5.0f} us)  select {r['select_us']:5.0f} us  "
            f"claim/select {r['vs_select']:5.2f}  claim/claim@{args.sizes.split(',')[0]} "
            f"{r['vs_smallest']:4.2f}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--only", choices=("intake", "submission", "claims"))
    parser.add_argument("--serve", choices=("bare", "cirelay"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, Path(args.workdir))
        return
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset: apt-get install wrk util-linux")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for the server, one for the load")
    from service.logging import configure_logging

    configure_logging(_settings(Path(tempfile.gettempdir())))
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cirelay-bench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "intake"):
            summary["intake"] = bench_intake(args, workdir)
        if args.only in (None, "submission"):
            summary["submission"] = bench_submission(args, workdir)
        if args.only in (None, "claims"):
            summary["claims"] = bench_claims(args, workdir)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: intake, submission and claim cost, each against a baseline measured in the same run.

    python -m tests.bench.bench_queue [--backend sqlite|postgres] [--seconds 10]
                                      [--connections 16] [--jobs 2000] [--sizes 1000,10000,100000]
                                      [--claims 500] [--only intake|submission|claims|replicas]

``--backend postgres`` starts its own PostgreSQL server (tests/postgres/server.sh; not pinned: on
two cores, pinned beside wrk or beside the measured server it starves) and runs everything on
fresh databases of it; claim sizes then default to 1k, 100k and 1M.

1. Intake (`POST /v1/jobs`): wrk (pinned to core 1) posts the same valid JSON Request to
   - bare: an aiohttp app whose one handler reads the body and answers 202 with a small JSON;
   - cirelay: the real service app (middleware, bearer auth, parse, full validation, durable
     insert into the queue, metrics) with its submitter off, on a fresh database;
   each server alone on core 0, none writing access logs. Ratio = cirelay / bare.
   On PostgreSQL also one replica against two on the same database ("x1 free", "x2 free"), each
   replica loaded by its own wrk with its share of the connections (rates summed), the replicas
   not pinned, so a second one can use what CPU wrk and PostgreSQL leave on the two cores.
2. Submission (jobs/s to CI): the emulator (no latency, no faults) runs on core 1; on core 0,
   - baseline: the CI client alone, ``workers`` concurrent loops calling create;
   - cirelay: a burst-mode Submitter draining a queue of the same number of jobs (claim, rate
     limiter with a limit far above the rate reached, in-doubt mark, create, record).
   Ratio = submitter / bare client.
3. Claim cost as the queue grows: for each size of queued jobs (random JobLevel 0-2), the mean
   time of ``claim`` (each claimed job then recorded as submitted, as every job is), against a
   plain indexed ``SELECT`` of one job by id through the same connection, and against itself at
   the smallest size. At most half of each queue is claimed, so it stays near its nominal size.
4. Replicas (PostgreSQL only): ``--jobs`` queued jobs drained (claim, then record as submitted)
   by one process with ``workers`` concurrent loops, then by two processes with as many each, on
   the same database (not pinned): jobs/s.

A benchmark, never a test: nothing here asserts timings. Needs wrk and taskset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.bench import wrk
from tests.bench.postgres import fresh_database, postgres
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


def _settings(workdir: Path, database_url: str | None = None, **changes: Any) -> Any:
    """Service settings on ``database_url``, or on a new SQLite file in ``workdir``."""
    from service.settings import Settings
    from tests.queue.samples import BUCKET, REGION

    return Settings.load(
        {
            "CIRELAY_DATABASE_URL": database_url
            or f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}",
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


def _serve(kind: str, port: int, workdir: Path, database_url: str | None, pinned: bool) -> None:
    from service.app import create_app
    from service.logging import configure_logging

    if pinned:
        os.sched_setaffinity(0, {SERVER_CORE})
    settings = _settings(workdir, database_url, submitter_enabled=False)
    configure_logging(settings)
    app = _bare_app() if kind == "bare" else create_app(settings)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _wrk(urls: list[str], seconds: float, connections: int, workdir: Path) -> dict[str, Any]:
    """wrk against each of ``urls`` at once, ``connections`` split between them: the rates
    and error counts summed, the worst latencies."""
    from tests.queue.samples import request_json

    script = workdir / "intake.lua"
    script.write_text(LUA)
    body = workdir / "request.json"
    body.write_bytes(request_json("bench", level=1))
    procs = [
        subprocess.Popen(
            [
                "taskset",
                "-c",
                str(LOAD_CORE),
                "wrk",
                "-t1",
                f"-c{connections // len(urls)}",
                f"-d{round(seconds)}s",
                "--latency",
                "-s",
                str(script),
                url,
                "--",
                str(body),
                API_TOKEN,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"wrk exited with {proc.returncode}")
        reports.append(wrk.parse(out))
    if len(reports) == 1:
        return reports[0]
    return {
        "rps": sum(r["rps"] for r in reports),
        "non_2xx": sum(r["non_2xx"] for r in reports),
        "p50_ms": max(r["p50_ms"] for r in reports),
        "p99_ms": max(r["p99_ms"] for r in reports),
    }


def _server(
    kind: str, workdir: Path, database_url: str | None, pinned: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.bench.bench_queue",
        "--serve",
        kind,
        "--port",
        str(port),
        "--workdir",
        str(workdir),
    ]
    if database_url is not None:
        command += ["--database-url", database_url]
    if not pinned:
        command.append("--unpinned")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _wait_port(proc, port, kind)
    return proc, f"http://127.0.0.1:{port}/v1/jobs"


def bench_intake(
    args: argparse.Namespace, workdir: Path, new_database: Callable[[], str] | None
) -> dict[str, Any]:
    """``new_database``: a fresh PostgreSQL database per run (None: SQLite files)."""
    runs = [("bare", "bare", 1, True), ("cirelay", "cirelay", 1, True)]
    if new_database is not None:
        runs += [("x1 free", "cirelay", 1, False), ("x2 free", "cirelay", 2, False)]
    results: dict[str, Any] = {}
    for name, kind, replicas, pinned in runs:
        database_url = new_database() if new_database is not None and kind != "bare" else None
        procs: list[subprocess.Popen[bytes]] = []
        try:
            urls = []
            for _ in range(replicas):
                proc, url = _server(kind, workdir, database_url, pinned)
                procs.append(proc)
                urls.append(url)
            _wrk(urls, args.warmup, args.connections, workdir)
            results[name] = _wrk(urls, args.seconds, args.connections, workdir)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
        r = results[name]
        print(
            f"intake   {name:10} {r['rps']:8.0f} jobs/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}",
            flush=True,
        )
    results["ratio"] = round(results["cirelay"]["rps"] / results["bare"]["rps"], 3)
    print(f"intake   ratio cirelay/bare: {results['ratio']:.3f}", flush=True)
    if "x2 free" in results:
        results["ratio_x2"] = round(results["x2 free"]["rps"] / results["x1 free"]["rps"], 3)
        print(f"intake   ratio two replicas/one (unpinned): {results['ratio_x2']:.3f}", flush=True)
    return results


# --- 2. submission ------------------------------------------------------------------------------


async def _submission(
    args: argparse.Namespace, workdir: Path, emulator_url: str, database_url: str | None
) -> dict[str, Any]:
    from service.ci.client import CIClient
    from service.ci.signing import Credentials
    from service.intake import Target, enqueue
    from service.metrics import Metrics
    from service.ratelimit import RateLimiter
    from service.request import parse_request
    from service.storage import open_storage
    from service.submitter import Submitter
    from tests.queue.samples import BUCKET, REGION, request_json

    settings = _settings(workdir, database_url, ci_endpoint=emulator_url, ci_rate_limit=1e6)
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

        # Storage must be closed on every path, or its threads keep the process alive.
        storage = await open_storage(settings.database_url)
        try:
            queue = storage.queue
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
            await storage.close()
    if depth["submitted"] != args.jobs:
        raise SystemExit(f"submission incomplete: {depth}")
    return {
        "bare_client": round(bare, 1),
        "cirelay": round(ours, 1),
        "ratio": round(ours / bare, 3),
    }


def bench_submission(
    args: argparse.Namespace, workdir: Path, database_url: str | None
) -> dict[str, Any]:
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
        result = asyncio.run(_submission(args, workdir, f"http://127.0.0.1:{port}", database_url))
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
    """Insert ``size`` queued jobs into a SQLite queue in one transaction (the schema's own
    columns)."""
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


# ``size`` queued jobs ``bench-1`` … ``bench-N`` with random JobLevels, written by the server.
_PG_FILL = (
    "INSERT INTO jobs (id, state, bucket, region, tag, job_level, request, submit_name,"
    " caller_callback, via, created_at, available_at)"
    " SELECT 'bench-' || n, 'queued', 'media-1250000000', 'ap-chongqing', 'Transcode',"
    " floor(random() * 3)::int, '{\"Name\":\"bench\"}', 'bench-' || n, '', 'http',"
    " $2 + n * 1e-6, $2 + n * 1e-6 FROM generate_series(1, $1::int) AS n"
)


async def _fill_postgres(db: Any, size: int) -> list[str]:
    async with db.connection() as conn:
        await conn.execute(_PG_FILL, size, time.time())
        # What autovacuum does to a long-lived table: statistics and a visibility map.
        await conn.execute("VACUUM ANALYZE jobs")
    return [f"bench-{n}" for n in range(1, size + 1)]


@contextlib.asynccontextmanager
async def _filled_queue(
    size: int, workdir: Path, database_url: str | None
) -> AsyncIterator[tuple[Any, Callable[[str], Awaitable[None]], list[str]]]:
    """A queue holding ``size`` queued jobs, a plain indexed read of one job by id through the
    same connection (the baseline), and the jobs' ids. Closed on every path: an open database
    keeps the process alive."""
    if database_url is None:
        from service.storage.sqlite.database import Database
        from service.storage.sqlite.queue import SQLiteJobQueue

        db = await Database.open(str(workdir / f"claims-{size}.db"))
        try:
            queue = await SQLiteJobQueue.open(db)

            async def select(job_id: str) -> None:
                async with db.exclusive() as conn:
                    cur = await conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
                    await cur.fetchone()

            yield queue, select, await _fill(db, size)
        finally:
            await db.close()
        return
    from service.storage.postgres.database import Database as PgDatabase
    from service.storage.postgres.queue import PostgresJobQueue

    pg = await PgDatabase.open(database_url, pool_size=2)  # one of them listens
    try:
        pg_queue = await PostgresJobQueue.open(pg)

        async def pg_select(job_id: str) -> None:
            async with pg.connection() as conn:
                await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)

        try:
            yield pg_queue, pg_select, await _fill_postgres(pg, size)
        finally:
            await pg_queue.close()
    finally:
        await pg.close()


async def _timed(count: int, step: Callable[[int], Any]) -> float:
    started = time.perf_counter()
    for i in range(count):
        await step(i)
    return (time.perf_counter() - started) / count


async def _claim_cost(
    size: int, claims: int, workdir: Path, database_url: str | None
) -> dict[str, float]:
    async with _filled_queue(size, workdir, database_url) as (queue, read, ids):
        rng = random.Random(1)
        claiming = 0.0

        async def select(_: int) -> None:
            await read(rng.choice(ids))

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
    return {
        "select_us": select_s * 1e6,
        "claim_us": claiming / claims * 1e6,
        "claim_record_us": cycle_s * 1e6,
    }


def bench_claims(
    args: argparse.Namespace, workdir: Path, new_database: Callable[[], str] | None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    first: float | None = None
    sizes = args.sizes.split(",")
    for size in (int(s) for s in sizes):
        database_url = new_database() if new_database is not None else None
        # At most half the queue is claimed, so it stays near its nominal size throughout.
        r = asyncio.run(_claim_cost(size, min(args.claims, size // 2), workdir, database_url))
        first = first or r["claim_us"]
        r["vs_select"] = round(r["claim_us"] / r["select_us"], 2)
        r["vs_smallest"] = round(r["claim_us"] / first, 2)
        results[str(size)] = r
        print(
            f"claim    {size:>7} queued  claim {r['claim_us']:5.0f} us  "
            f"(+record {r['claim_record_us']:5.0f} us)  select {r['select_us']:5.0f} us  "
            f"claim/select {r['vs_select']:5.2f}  claim/claim@{sizes[0]} "
            f"{r['vs_smallest']:4.2f}",
            flush=True,
        )
    return results


# --- 4. replicas --------------------------------------------------------------------------------


async def _drain(database_url: str, workers: int) -> None:
    """One replica's share of a drain (run as its own process): opens the queue, says
    ``ready``, starts on ``go`` from stdin, prints how many jobs it took."""
    from service.storage.postgres.database import Database
    from service.storage.postgres.queue import PostgresJobQueue

    db = await Database.open(database_url, pool_size=workers + 1)
    try:
        queue = await PostgresJobQueue.open(db)
        taken = 0

        async def worker(owner: str) -> None:
            nonlocal taken
            while job := await queue.claim(owner, lease_seconds=30, now=time.time()):
                await queue.record_submitted(job.id, owner, f"ci-{job.id}", now=time.time())
                taken += 1

        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(worker(f"{os.getpid()}-{i}") for i in range(workers)))
        await queue.close()
    finally:
        await db.close()
    print(taken, flush=True)


async def _fill_database(database_url: str, size: int) -> None:
    from service.storage.postgres.database import Database
    from service.storage.postgres.queue import PostgresJobQueue

    db = await Database.open(database_url, pool_size=2)
    try:
        await (await PostgresJobQueue.open(db)).close()
        await _fill_postgres(db, size)
    finally:
        await db.close()


def bench_replicas(args: argparse.Namespace, new_database: Callable[[], str]) -> dict[str, Any]:
    from service.settings import Settings

    workers = Settings.load({}).workers
    results: dict[str, Any] = {}
    for replicas in (1, 2):
        database_url = new_database()
        asyncio.run(_fill_database(database_url, args.jobs))
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.bench_queue",
                    "--drain",
                    database_url,
                    "--workers",
                    str(workers),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(replicas)
        ]
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"drain process exited with {proc.wait()}")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        taken = [int(proc.communicate()[0].split()[-1]) for proc in procs]
        elapsed = time.perf_counter() - started
        if sum(taken) != args.jobs:
            raise SystemExit(f"replicas took {taken} of {args.jobs} jobs")
        results[str(replicas)] = {"jobs_per_s": round(args.jobs / elapsed, 1), "taken": taken}
        print(
            f"replicas {replicas} x {workers} workers  {args.jobs / elapsed:8.0f} jobs/s "
            f"(claim + record)  jobs per replica {taken}",
            flush=True,
        )
    results["ratio"] = round(results["2"]["jobs_per_s"] / results["1"]["jobs_per_s"], 3)
    print(f"replicas ratio two/one: {results['ratio']:.3f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--sizes", help="default: 1000,10000,100000 (PostgreSQL: …,1000000)")
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--only", choices=("intake", "submission", "claims", "replicas"))
    parser.add_argument("--serve", choices=("bare", "cirelay"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--unpinned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, Path(args.workdir), args.database_url, not args.unpinned)
        return
    if args.drain:
        asyncio.run(_drain(args.drain, args.workers))
        return
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset: apt-get install wrk util-linux")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for the server, one for the load")
    if args.only == "replicas" and args.backend != "postgres":
        raise SystemExit("--only replicas needs --backend postgres")
    postgres_backend = args.backend == "postgres"
    args.sizes = args.sizes or ("1000,100000,1000000" if postgres_backend else "1000,10000,100000")
    from service.logging import configure_logging

    configure_logging(_settings(Path(tempfile.gettempdir())))
    summary: dict[str, Any] = {"backend": args.backend}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cirelay-bench-")))
        new_database: Callable[[], str] | None = None
        if postgres_backend:
            # Not pinned: on two cores, pinned beside wrk or the server it would starve.
            server = stack.enter_context(postgres(core=None))
            new_database = functools.partial(fresh_database, server)
        if args.only in (None, "intake"):
            summary["intake"] = bench_intake(args, workdir, new_database)
        if args.only in (None, "submission"):
            database_url = new_database() if new_database is not None else None
            summary["submission"] = bench_submission(args, workdir, database_url)
        if args.only in (None, "claims"):
            summary["claims"] = bench_claims(args, workdir, new_database)
        if new_database is not None and args.only in (None, "replicas"):
            summary["replicas"] = bench_replicas(args, new_database)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

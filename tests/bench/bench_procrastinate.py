"""Benchmark: cirelay's PostgreSQL job queue beside procrastinate, on the same PostgreSQL server.

    python -m tests.bench.bench_procrastinate [--jobs 5000] [--concurrency 16] [--pool 10]
                                              [--rounds 3]

procrastinate (PyPI) is a PostgreSQL-backed Python job queue that teams already run. Each round
gives each queue a fresh database on one server (tests/postgres/server.sh, pinned to core 1; this
client on core 0), the same pool size and the same concurrency, and measures

- enqueues/s: ``--concurrency`` callers each storing one job at a time until ``--jobs`` are
  stored, each call returning once its job is committed (procrastinate: ``defer_async`` of a no-op
  task; cirelay: ``JobQueue.enqueue``, whose callers share commits through group commit);
- claim-to-done/s: the stored jobs drained by ``--concurrency`` C concurrent workers, each job
  fetched, run and marked succeeded (procrastinate, ``wait=False``, the no-op task) or claimed and
  recorded as submitted (cirelay: C loops of ``claim`` then ``record_submitted``, the write that
  ends a job's time in the queue). procrastinate runs twice: one worker with ``concurrency=C``
  (its usual set-up; the worker fetches one job at a time) and C workers with ``concurrency=1``
  each in the same event loop (C fetches in flight, as C claim loops have).

The order of the two alternates between rounds. A benchmark, never a test: nothing here asserts
timings.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import procrastinate

from tests.bench.postgres import fresh_database, postgres
from tests.queue.samples import make_job

CLIENT_CORE = 0
DATABASE_CORE = 1


async def _concurrently(jobs: int, concurrency: int, one: Callable[[], Awaitable[Any]]) -> float:
    """Calls ``one`` ``jobs`` times from ``concurrency`` loops; calls per second."""
    left = jobs

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return jobs / (time.perf_counter() - started)


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def bench_procrastinate(url: str, args: argparse.Namespace, workers: int) -> dict[str, float]:
    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=args.pool)
    app = procrastinate.App(connector=connector)

    async def noop() -> None:
        return None

    task = app.task(name="noop", queue="bench")(noop)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        enqueues = await _concurrently(args.jobs, args.concurrency, task.defer_async)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                app.run_worker_async(
                    name=f"bench-{i}",
                    queues=["bench"],
                    concurrency=args.concurrency // workers,
                    wait=False,
                    listen_notify=False,  # drains a full queue: nothing to be woken for
                    install_signal_handlers=False,
                )
                for i in range(workers)
            )
        )
        done = args.jobs / (time.perf_counter() - started)
    succeeded = await _count(
        url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    )
    if succeeded != args.jobs:
        raise SystemExit(f"procrastinate finished {succeeded} of {args.jobs} jobs")
    return {"enqueues": enqueues, "done": done}


async def bench_cirelay(url: str, args: argparse.Namespace) -> dict[str, float]:
    from service.storage.postgres.database import Database
    from service.storage.postgres.queue import PostgresJobQueue

    db = await Database.open(url, pool_size=args.pool)
    try:
        queue = await PostgresJobQueue.open(db)
        try:
            enqueues = await _concurrently(
                args.jobs, args.concurrency, lambda: queue.enqueue(make_job(), now=time.time())
            )

            async def worker(owner: str) -> None:
                while job := await queue.claim(owner, lease_seconds=30, now=time.time()):
                    await queue.record_submitted(job.id, owner, f"ci-{job.id}", now=time.time())

            started = time.perf_counter()
            await asyncio.gather(*(worker(f"w{i}") for i in range(args.concurrency)))
            done = args.jobs / (time.perf_counter() - started)
            depth = await queue.depth_by_state()
        finally:
            await queue.close()
    finally:
        await db.close()
    if depth["submitted"] != args.jobs:
        raise SystemExit(f"cirelay finished {depth['submitted']} of {args.jobs} jobs")
    return {"enqueues": enqueues, "done": done}


BENCHES: dict[str, Callable[[str, argparse.Namespace], Awaitable[dict[str, float]]]] = {
    "procrastinate 1xC": functools.partial(bench_procrastinate, workers=1),
    "procrastinate Cx1": lambda url, args: bench_procrastinate(url, args, args.concurrency),
    "cirelay": bench_cirelay,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for this client, one for PostgreSQL")
    from service.logging import configure_logging
    from service.settings import Settings

    configure_logging(Settings.load({"CIRELAY_LOG_LEVEL": "warning"}))
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in BENCHES}
    with postgres(core=DATABASE_CORE) as server:
        os.sched_setaffinity(0, {CLIENT_CORE})
        for round_ in range(args.rounds):
            order = list(BENCHES) if round_ % 2 == 0 else list(reversed(BENCHES))
            for name in order:
                r = asyncio.run(BENCHES[name](fresh_database(server), args))
                results[name].append(r)
                print(
                    f"round {round_ + 1}  {name:17}  enqueue {r['enqueues']:7.0f} jobs/s  "
                    f"claim-to-done {r['done']:7.0f} jobs/s",
                    flush=True,
                )
    print(
        f"\n{args.jobs} no-op jobs, concurrency {args.concurrency}, pool {args.pool}, "
        f"{args.rounds} rounds (median, min-max):"
    )
    print(f"{'queue':17}  {'enqueues/s':>22}  {'claim-to-done/s':>22}")
    summary: dict[str, Any] = {}
    for name, rounds in results.items():
        cells = []
        for metric in ("enqueues", "done"):
            values = [r[metric] for r in rounds]
            summary.setdefault(name, {})[metric] = {
                "median": round(statistics.median(values)),
                "min": round(min(values)),
                "max": round(max(values)),
            }
            cells.append(
                f"{statistics.median(values):7.0f} ({min(values):5.0f}-{max(values):5.0f})"
            )
        print(f"{name:17}  {cells[0]:>22}  {cells[1]:>22}")
    for metric in ("enqueues", "done"):
        best = max(v[metric]["median"] for k, v in summary.items() if k != "cirelay")
        ratio = summary["cirelay"][metric]["median"] / best
        summary.setdefault("ratio cirelay/best procrastinate", {})[metric] = round(ratio, 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: cirelay's webhook deliveries/s to a local receiver against a bare aiohttp client
posting the same bodies, in the same run.

    python -m tests.bench.bench_webhooks [--deliveries 5000] [--concurrency 64] [--rounds 3]
                                         [--database-url URL]

The receiver is a bare aiohttp server in a process of its own (answers 204, reads the body), so
neither side shares its event loop with it. The bodies are canonical TaskFinish events as JSON
(~1.4 KB), each of a job of its own (no ordering between them).

- bare: one ``aiohttp.ClientSession`` posting every body with ``--concurrency`` requests in
  flight: the ceiling of the client library on this machine.
- cirelay, dispatch: the deliveries already sit in the table (pending); cirelay's dispatcher
  (claims under leases, Standard Webhooks signature, guarded resolver, attempt recorded per
  delivery) sends them all, ``--concurrency`` at once, to the one destination.
- cirelay, fan-out + dispatch: the events sit in the event log; fan-out turns them into
  deliveries and the dispatcher sends them: what a burst of callbacks costs end to end.

Time runs until every delivery is recorded as delivered. Ratio = cirelay / bare.
A benchmark, never a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from service.ingest.normalize import normalize
from service.ingest.parse import parse_callback
from service.metrics import Metrics
from service.storage import Storage, open_storage
from service.webhooks.dispatcher import DispatchConfig, Dispatcher
from service.webhooks.fanout import FanOut, JobCallbacks, subscription_delivery
from service.webhooks.signing import parse_secrets
from service.webhooks.ssrf import AddressPolicy, GuardedResolver, parse_networks
from tests.events.support import task_finish_json
from tests.ports import free_port
from tests.queue.rig import until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def serve(port: int) -> None:
    """The receiver process: reads each body, answers 204."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def events(count: int) -> list[dict[str, Any]]:
    received = datetime.now(UTC)
    made = []
    for n in range(count):
        parsed = parse_callback(task_finish_json(f"j{n:032x}"), "application/json", max_depth=32)
        [event] = normalize(parsed, source="http", received_at=received)
        event["cirelay_job_id"] = f"{n:032x}"
        made.append(event)
    return made


async def bare(url: str, bodies: list[bytes], concurrency: int) -> float:
    started = time.perf_counter()
    queue = iter(bodies)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    assert resp.status == 204

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - started)


async def cirelay(
    database_url: str,
    url: str,
    stored: list[dict[str, Any]],
    concurrency: int,
    *,
    fan_out: bool,
) -> float:
    storage = await open_storage(database_url)
    metrics = Metrics()
    try:
        if fan_out:
            await storage.events.store(stored)
        else:
            rows = [subscription_delivery(event, url) for event in stored]
            await storage.deliveries.fan_out(rows, (0, 0), now=time.time())
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=GuardedResolver(AddressPolicy()), limit=concurrency
            )
        ) as session:
            policy = AddressPolicy(parse_networks("127.0.0.0/8"))
            dispatcher = Dispatcher(
                storage.deliveries,
                session,
                DispatchConfig(
                    keys=parse_secrets(SECRET),
                    schedule=(1.0,),
                    policy=policy,
                    concurrency=concurrency,
                    per_destination=concurrency,
                    connect_timeout=5,
                    timeout=15,
                    breaker_failures=5,
                    breaker_seconds=30,
                ),
                metrics,
            )
            tasks = []
            started = time.perf_counter()
            if fan_out:
                # Fan-out starting before the events were received: every one is owed.
                await storage.deliveries.fanout_position(now=0.0)
                fanout = _fanout(storage, url, dispatcher.wake.notify)
                tasks.append(asyncio.create_task(fanout.run()))
            tasks.append(asyncio.create_task(dispatcher.run()))

            async def all_delivered() -> bool:
                return _delivered(metrics) >= len(stored)

            await until(all_delivered, "every delivery delivered", deadline=600)
            elapsed = time.perf_counter() - started
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(stored) / elapsed
    finally:
        await storage.close()


def _fanout(storage: Storage, url: str, wake: Callable[[], None]) -> FanOut:
    return FanOut(
        storage.events,
        storage.deliveries,
        storage.leases,
        JobCallbacks(storage.queue),
        subscriptions=[url],
        callbacks_enabled=False,
        interval=1.0,
        clock=time.time,
        on_new=wake,
    )


def _delivered(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "cirelay_webhook_deliveries_total", {"outcome": "delivered"}
    )
    return value or 0.0


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.bench_webhooks", "--serve", str(port)
    )
    url = f"http://127.0.0.1:{port}/hook"
    try:
        await _wait_listening(port)
        stored = events(args.deliveries)
        bodies = [subscription_delivery(event, url).body for event in stored]
        where = args.database_url.split("@")[-1] or "sqlite (temp file)"  # no password shown
        print(
            f"{args.deliveries} deliveries of {statistics.mean(map(len, bodies)):.0f} B,"
            f" concurrency {args.concurrency}, database {where}"
        )
        results: dict[str, list[float]] = {"bare": [], "dispatch": [], "fanout": []}
        for round_ in range(args.rounds):
            results["bare"].append(await bare(url, bodies, args.concurrency))
            for name, fan_out in (("dispatch", False), ("fanout", True)):
                with tempfile.TemporaryDirectory() as tmp:
                    database = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
                    if args.database_url:
                        await _reset(database)
                    results[name].append(
                        await cirelay(database, url, stored, args.concurrency, fan_out=fan_out)
                    )
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items())
            )
        best = {name: max(values) for name, values in results.items()}
        print(f"bare aiohttp client           {best['bare']:>9,.0f} deliveries/s")
        print(
            f"cirelay dispatch              {best['dispatch']:>9,.0f} deliveries/s"
            f"  ({best['dispatch'] / best['bare']:.2f} x bare)"
        )
        print(
            f"cirelay fan-out + dispatch    {best['fanout']:>9,.0f} deliveries/s"
            f"  ({best['fanout'] / best['bare']:.2f} x bare)"
        )
    finally:
        if receiver.returncode is None:
            receiver.terminate()
        await receiver.wait()


async def _wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
    raise RuntimeError("the receiver did not start")


async def _reset(database_url: str) -> None:
    """Empty the webhook and event tables of a PostgreSQL database between runs."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE deliveries, delivery_bodies, delivery_fanout, events, leases")
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

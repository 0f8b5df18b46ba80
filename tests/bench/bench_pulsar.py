"""Benchmark: cirelay's Pulsar consumer and outbox publisher against bare pulsar-client loops,
measured in the same run on the same real broker.

    python -m tests.bench.bench_pulsar [--events 20000] [--rounds 2]

The broker is the one in ``$CIRELAY_TEST_PULSAR_ENV`` (a ``pulsar.env`` written by
``tests/pulsar/standalone.sh``), else one started here with that script and stopped at the end.

1. Consume: ``--events`` CI callbacks (TaskFinish, half XML, half JSON, ~1 KB, all distinct) are
   published to one topic up front. Then, each on its own subscription of that topic, from the
   earliest message:
   - bare: a pulsar-client receive-and-ack loop (the synchronous client in one thread, and the
     asyncio client with 64 concurrent receivers; the faster one is the baseline);
   - cirelay: the service app (``create_app``) on a fresh SQLite file, its consumer taking every
     message through parse → normalise → store (committed) → ack.
   - peer: Benthos (``tests/bench/peer/pulsar.yaml``): pulsar input → the bloblang mapping of
     the HTTP peer → sql_insert into SQLite (batched, ``ON CONFLICT DO NOTHING``), acking each
     message after its insert.
   Time runs from subscribing (starting the app) until the last message is acked (for cirelay
   and the peer: until every event is counted as stored, which precedes its ack). Ratios =
   cirelay / bare and cirelay / peer (issue 15's goal: >= 1.5).
   Two ceilings are measured beside it, without the broker: the event pipeline alone (parse →
   normalise → store), and parse → normalise alone (no store).
2. Publish: the same number of canonical events sit in a fresh outbox; cirelay's publisher drains
   it to a topic (JSON, key = job id, row marked done after the broker's ack), against a bare
   asyncio producer sending the same messages with the same keys. Ratio = cirelay / bare.

A benchmark, never a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pulsar
import pulsar.asyncio
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.appkeys import METRICS
from service.events.pipeline import EventPipeline
from service.ingest.normalize import normalize
from service.ingest.parse import parse_callback
from service.metrics import Metrics
from service.pulsar.publisher import encode
from service.settings import Settings
from service.storage.sqlite.database import Database
from service.storage.sqlite.events import SQLiteEventLog
from service.storage.sqlite.queue import SQLiteJobQueue
from tests.bench import peer
from tests.events.support import task_finish_json, task_finish_xml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "pulsar" / "standalone.sh"
ASYNC_RECEIVERS = 64


@contextmanager
def broker() -> Iterator[dict[str, str]]:
    env_file = os.environ.get("CIRELAY_TEST_PULSAR_ENV")
    if env_file:
        yield _read_env(Path(env_file))
        return
    with tempfile.TemporaryDirectory(prefix="cirelay-bench-pulsar-") as tmp:
        subprocess.run(["bash", str(SCRIPT), "start", tmp], check=True)
        try:
            yield _read_env(Path(tmp) / "pulsar.env")
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop", tmp], check=False)


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def _topic(prefix: str) -> str:
    return f"persistent://public/default/bench-{prefix}-{uuid.uuid4().hex[:8]}"


def _body(n: int) -> bytes:
    return task_finish_xml(f"jb{n}") if n % 2 else task_finish_json(f"jb{n}")


# A stdlib logger (WARNING by default) instead of the client's INFO lines on stdout.
CLIENT_LOG = logging.getLogger("pulsar")


def _async_client(env: dict[str, str]) -> Any:
    return pulsar.asyncio.Client(
        env["PULSAR_URL"],
        authentication=pulsar.AuthenticationToken(env["PULSAR_TOKEN"]),
        logger=CLIENT_LOG,
    )


async def publish_all(env: dict[str, str], name: str, bodies: list[bytes]) -> None:
    client = _async_client(env)
    producer = await client.create_producer(name, batching_max_publish_delay_ms=5)
    for start in range(0, len(bodies), 500):
        await asyncio.gather(*(producer.send(b) for b in bodies[start : start + 500]))
    await producer.close()
    await client.close()


def bare_sync_consume(env: dict[str, str], name: str, count: int) -> float:
    """Seconds for a plain synchronous receive → acknowledge loop over ``count`` messages."""
    client = pulsar.Client(
        env["PULSAR_URL"],
        authentication=pulsar.AuthenticationToken(env["PULSAR_TOKEN"]),
        logger=CLIENT_LOG,
    )
    started = time.perf_counter()
    consumer = client.subscribe(
        name,
        f"bare-sync-{uuid.uuid4().hex[:6]}",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    for _ in range(count):
        consumer.acknowledge(consumer.receive())
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


async def bare_async_consume(env: dict[str, str], name: str, count: int) -> float:
    """Seconds for ASYNC_RECEIVERS asyncio receive → acknowledge loops sharing ``count``."""
    client = _async_client(env)
    started = time.perf_counter()
    consumer = await client.subscribe(
        name,
        f"bare-async-{uuid.uuid4().hex[:6]}",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    left = count
    done = asyncio.Event()

    async def loop() -> None:
        nonlocal left
        while left > 0:
            message = await consumer.receive()
            await consumer.acknowledge(message)
            left -= 1
            if left == 0:
                done.set()

    tasks = [asyncio.create_task(loop()) for _ in range(ASYNC_RECEIVERS)]
    await done.wait()
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return elapsed


def _settings(workdir: Path, env: dict[str, str], **environ: str) -> Settings:
    return Settings.load(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{workdir / f'{uuid.uuid4().hex[:8]}.db'}",
            "CIRELAY_API_TOKEN": "bench",
            "CIRELAY_LOG_LEVEL": "warning",
            "CIRELAY_SUBMITTER_ENABLED": "false",
            "CIRELAY_RECONCILE_ENABLED": "false",
            "CIRELAY_PULSAR_URL": env["PULSAR_URL"],
            "CIRELAY_PULSAR_TOKEN": env["PULSAR_TOKEN"],
            **environ,
        }
    )


async def _until(check: Callable[[], bool]) -> None:
    while not check():  # noqa: ASYNC110 -- a counter in another component: nothing to await
        await asyncio.sleep(0.005)


async def cirelay_consume(settings: Settings, count: int) -> float:
    started = time.perf_counter()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    received = client.app[METRICS].events_received

    def stored() -> bool:
        # This one counter only: collecting the whole registry every few ms would cost as much
        # as the work measured.
        (family,) = received.collect()
        total: float = sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total >= count

    await _until(stored)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def peer_consume(env: dict[str, str], name: str, count: int, workdir: Path) -> float:
    """Seconds for the peer (Benthos, ``tests/bench/peer/pulsar.yaml``: pulsar input → the same
    bloblang mapping as the HTTP peer → sql_insert into SQLite, acking after the insert) to store
    ``count`` messages, from its start until the count of committed rows reaches ``count``."""
    subscription = f"peer-{uuid.uuid4().hex[:6]}"
    # Benthos's pulsar input starts a new subscription at the latest message: make it first, at
    # the earliest, as cirelay's is.
    client = pulsar.Client(
        env["PULSAR_URL"],
        authentication=pulsar.AuthenticationToken(env["PULSAR_TOKEN"]),
        logger=CLIENT_LOG,
    )
    client.subscribe(
        name,
        subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
    ).close()
    client.close()
    db = workdir / f"peer-{subscription}.db"
    environ = {
        "PULSAR_URL": env["PULSAR_URL"],
        "PULSAR_TOKEN": env["PULSAR_TOKEN"],
        "PEER_TOPIC": name,
        "PEER_SUBSCRIPTION": subscription,
        "PEER_DB": str(db),
        "PEER_DIR": str(peer.SOURCE),
        "PEER_SOURCE": "pulsar",
    }
    command = [str(peer.binary("pulsar")), "-c", str(peer.config("pulsar.yaml"))]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **environ}, stdout=subprocess.DEVNULL)
    try:
        while _stored_rows(db) < count:
            if proc.poll() is not None:
                raise SystemExit(f"the peer exited with {proc.returncode}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return elapsed


def _stored_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


async def pipeline_alone(workdir: Path, bodies: list[bytes], concurrency: int) -> float:
    """Seconds for the event pipeline alone (no broker) to ingest ``bodies``, ``concurrency`` at
    a time: the ceiling any transport feeding it can reach."""
    db = await Database.open(str(workdir / f"alone-{uuid.uuid4().hex[:8]}.db"))
    queue = await SQLiteJobQueue.open(db)
    store = await SQLiteEventLog.open(
        db, outbox=False, rejected_body_max_bytes=1024, rejected_max_count=10
    )
    pipeline = EventPipeline(store, queue, Metrics(), max_depth=32)
    pending = iter(bodies)

    async def loop() -> None:
        for body in pending:
            await pipeline.ingest(body, "", source="pulsar")

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await store.close()
    await db.close()
    return elapsed


def parse_alone(bodies: list[bytes]) -> float:
    """Seconds to parse and normalise ``bodies``, nothing else (no broker, no store, no await):
    the ceiling for any consumer that turns each message into a canonical event."""
    received = datetime.now(UTC)
    started = time.perf_counter()
    for body in bodies:
        normalize(parse_callback(body), source="pulsar", received_at=received)
    return time.perf_counter() - started


async def fill_outbox(settings: Settings, count: int) -> list[dict[str, Any]]:
    db = await Database.open(settings.sqlite_path)
    store = await SQLiteEventLog.open(
        db, outbox=True, rejected_body_max_bytes=1024, rejected_max_count=10
    )
    received = datetime.now(UTC)
    events = []
    for n in range(count):
        events += normalize(parse_callback(_body(n)), source="pulsar", received_at=received)
    for start in range(0, count, 500):
        await store.store(events[start : start + 500])
    await store.close()
    await db.close()
    return events


async def cirelay_publish(settings: Settings, count: int) -> float:
    """Seconds until the app's publisher emptied an outbox of ``count`` events."""
    # A second connection to the file, as another process would watch it.
    db = await Database.open(settings.sqlite_path)
    watcher = await SQLiteEventLog.open(
        db, outbox=True, rejected_body_max_bytes=1024, rejected_max_count=10
    )
    assert await watcher.outbox_pending() == count
    started = time.perf_counter()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    while await watcher.outbox_pending():  # noqa: ASYNC110 -- another connection's view
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await client.close()
    await watcher.close()
    await db.close()
    return elapsed


async def bare_publish(env: dict[str, str], name: str, events: list[dict[str, Any]]) -> float:
    client = _async_client(env)
    started = time.perf_counter()
    # The same producer settings as cirelay's publisher (why: service/pulsar/publisher.py).
    producer = await client.create_producer(name, batching_enabled=False)
    for start in range(0, len(events), 500):
        sends = []
        for event in events[start : start + 500]:
            body, key, properties = encode(event)
            sends.append(producer.send(body, properties=properties, partition_key=key))
        await asyncio.gather(*sends)
    elapsed = time.perf_counter() - started
    await producer.close()
    await client.close()
    return elapsed


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>9,.0f} events/s ({seconds:6.2f} s)"


async def run(env: dict[str, str], count: int, rounds: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cirelay-bench-") as tmp:
        workdir = Path(tmp)
        print(f"broker {env['PULSAR_URL']}, {count} events per run, {rounds} round(s)")
        for round_no in range(1, rounds + 1):
            name = _topic("events")
            await publish_all(env, name, [_body(n) for n in range(count)])
            sync_s = await asyncio.to_thread(bare_sync_consume, env, name, count)
            async_s = await bare_async_consume(env, name, count)
            settings = _settings(
                workdir,
                env,
                CIRELAY_PULSAR_EVENTS_TOPIC=name,
                CIRELAY_PULSAR_SUBSCRIPTION=f"cirelay-{round_no}",
                CIRELAY_PULSAR_CONSUMER_CONCURRENCY=str(concurrency),
            )
            cirelay_s = await cirelay_consume(settings, count)
            peer_s = await asyncio.to_thread(peer_consume, env, name, count, workdir)
            bodies = [_body(n) for n in range(count)]
            alone_s = await pipeline_alone(workdir, bodies, concurrency)
            parse_s = parse_alone(bodies)
            bare_s = min(sync_s, async_s)
            print(f"round {round_no} consume")
            print(f"  bare sync receive+ack     {_rate(count, sync_s)}")
            print(f"  bare asyncio receive+ack  {_rate(count, async_s)}")
            print(f"  cirelay consume+store+ack {_rate(count, cirelay_s)}")
            print(f"  peer consume+store+ack    {_rate(count, peer_s)}")
            print(f"  pipeline alone, no broker {_rate(count, alone_s)}")
            print(f"  parse+normalise alone     {_rate(count, parse_s)}")
            print(f"  ratio cirelay / bare      {bare_s / cirelay_s:9.2f}")
            print(f"  ratio cirelay / peer      {peer_s / cirelay_s:9.2f}")
            print(f"  ratio cirelay / pipeline  {alone_s / cirelay_s:9.2f}")
            print(f"  ratio parse alone / bare  {bare_s / parse_s:9.2f}")

            output = _topic("out")
            settings = _settings(workdir, env, CIRELAY_PULSAR_OUTPUT_TOPIC=output)
            events = await fill_outbox(settings, count)
            bare_pub_s = await bare_publish(env, _topic("bare-out"), events)
            cirelay_pub_s = await cirelay_publish(settings, count)
            print(f"round {round_no} publish")
            print(f"  bare producer             {_rate(count, bare_pub_s)}")
            print(f"  cirelay outbox publisher  {_rate(count, cirelay_pub_s)}")
            print(f"  ratio cirelay / bare      {bare_pub_s / cirelay_pub_s:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with broker() as env, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # uvloop, as `cirelay serve` runs the app.
        runner.run(run(env, args.events, args.rounds, args.concurrency))


if __name__ == "__main__":
    main()

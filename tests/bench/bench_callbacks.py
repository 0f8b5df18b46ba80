"""Benchmark: durable callback ingestion, cirelay as deployed against its peer and a bare handler.

    python -m tests.bench.bench_callbacks [--seconds 10] [--connections 16] [--kinds peer,cirelay]

Each server runs in its own process pinned to core 0; wrk runs pinned to core 1 and posts unique
TaskFinish callbacks (a new JobId per request) with 16 connections, in XML and in JSON: compact
(as the emulator sends a Transcode job) and full (the documented Transcode sample with its
MediaInfo). Every durable server commits each callback before answering it. Servers:

- bare: an aiohttp app whose one handler reads the body and answers 200 (the ceiling);
- peer: what a platform team would deploy instead, Benthos v4.27.0 (``tests/bench/peer``):
  http_server with sync_response → bloblang (parse_xml / parse_json, mapped to the canonical
  event's fields) → sql_insert into SQLite WAL, batched 16 rows per 5 ms, ``ON CONFLICT
  (event_id) DO NOTHING``; the answer waits for the insert's ack;
- cirelay: ``cirelay serve`` itself (the CLI, deployment defaults, structlog access line per
  request on stderr) on a fresh SQLite file; the submitter and the reconciler are off, as there is
  no CI to talk to, and neither is on the callback path;
- cirelay-nolog (extra): the same app with aiohttp's access log off;
- parse (extra): the bare handler plus cirelay's parse and normalise, nothing else;
- floor (extra): the bare handler plus the least any durable ingestion on aiohttp and SQLite does:
  a C parse (ElementTree / orjson) and the body group-committed (one B-tree keyed by its SHA-256,
  written in the event loop's thread) before answering.

Prints one line per run and a JSON summary with each server's ratio to bare and cirelay's ratio to
the peer (issue 15's goal: cirelay/peer >= 1.5 with a p99 no worse than the peer's). Needs ``wrk``
(Debian package ``wrk``) and Go for the peer (built once, see ``tests/bench/peer.py``). A
benchmark, never a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web

from service import cli
from service.app import create_app
from service.emulator.documents import task_finish
from service.ingest.normalize import normalize
from service.ingest.parse import parse_callback
from service.logging import configure_logging
from service.settings import Settings
from service.storage.sqlite.database import Database
from service.storage.sqlite.queue import SQLiteJobQueue
from service.tokens import callback_token
from tests.bench import peer, wrk
from tests.events.support import submitted_job
from tests.ports import free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "callbacks"
SAMPLE_JOB_ID = "j94f9b32cb8bfeff04af295b059e59c2b"
# A Transcode media job as the emulator reports it (the shape of its TaskFinish callbacks).
COMPACT_DETAIL: dict[str, Any] = {
    "Code": "Success",
    "Message": "",
    "JobId": SAMPLE_JOB_ID,
    "Tag": "Transcode",
    "State": "Success",
    "CreationTime": "2022-06-30T18:47:18+0800",
    "StartTime": "2022-06-30T18:47:20+0800",
    "EndTime": "2022-06-30T18:48:02+0800",
    "QueueId": "p90ea2f7a998f7611ff25dcbefcb37fc3",
    "Input": {"BucketId": "media-1250000000", "Object": "in/demo.mp4", "Region": "ap-guangzhou"},
    "Operation": {
        "TemplateId": "t1460606b9752148c4ab182f55163ba7cd",
        "TemplateName": "MP4-H264-FHD",
        "Output": {
            "Region": "ap-guangzhou",
            "Bucket": "media-1250000000",
            "Object": "out/demo.mp4",
        },
        "MediaResult": {
            "OutputFile": {
                "Bucket": "media-1250000000",
                "Region": "ap-guangzhou",
                "ObjectName": ["out/demo.mp4"],
                "ObjectPrefix": "",
                "Md5Info": [
                    {"ObjectName": "out/demo.mp4", "Md5": "e8c802ed78ba7f4c6a2fb5144cba7cbc"}
                ],
            }
        },
        "UserData": "order-20220630-0042",
        "JobLevel": "0",
    },
}
SERVER_CORE = 0
LOAD_CORE = 1
KINDS = ("bare", "peer", "cirelay", "cirelay-nolog", "parse", "floor")
DEFAULT_KINDS = "peer,cirelay"
DURABLE = frozenset({"peer", "cirelay", "cirelay-nolog", "floor"})
BENCH_API_TOKEN = "bench-api-token"
MAX_DEPTH = 32  # CIRELAY_MAX_XML_DEPTH's default

# wrk script: every request gets a JobId unique across threads and runs.
LUA = r"""
local counter = 0
local prefix, suffix, tag
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  local at = assert(string.find(body, args[2], 1, true))
  prefix = string.sub(body, 1, at - 1)
  suffix = string.sub(body, at + string.len(args[2]))
  tag = args[3] .. "-" .. tostring(tid) .. "-"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[4]
end
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. tag .. counter .. suffix)
end
"""


# --- the servers (run in child processes) -------------------------------------------------------


def _bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/callbacks/{token}", handler)
    return app


def _parse_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        parsed = parse_callback(body, request.content_type, max_depth=MAX_DEPTH)
        normalize(parsed, source="http", received_at=datetime.now(UTC))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/callbacks/{token}", handler)
    return app


def _floor_app(db: str) -> web.Application:
    pending: list[tuple[tuple[str, bytes], asyncio.Future[None]]] = []
    wake = asyncio.Event()

    async def write(conn: sqlite3.Connection) -> None:
        while True:
            await wake.wait()
            wake.clear()
            await asyncio.sleep(0)  # as cirelay's store: let this turn's requests join the batch
            batch = pending[:]
            del pending[:]
            if not batch:  # taken by the previous round after it set the event
                continue
            marks = ", ".join(["(?, ?)"] * len(batch))
            # In the event loop's own thread: the cheapest commit there is (no handoff to a
            # database thread), if one a real service could not afford (it blocks the loop).
            conn.execute(
                f"INSERT OR IGNORE INTO bodies VALUES {marks}",
                [value for row, _ in batch for value in row],
            )
            for _, future in batch:
                future.set_result(None)

    async def database(app: web.Application) -> AsyncIterator[None]:
        conn = sqlite3.connect(db, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute(
            "CREATE TABLE bodies (sha256 TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID"
        )
        writer = asyncio.create_task(write(conn))
        yield
        writer.cancel()
        conn.close()

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type == "application/json":
            orjson.loads(body)
        else:
            ET.fromstring(body)  # the benchmark's own bodies: no DOCTYPE to refuse
        future = asyncio.get_running_loop().create_future()
        pending.append(((hashlib.sha256(body).hexdigest(), body), future))
        wake.set()
        await future
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(database)
    app.router.add_post("/v1/callbacks/{token}", handler)
    return app


def _cirelay_environ(db: str, port: int) -> dict[str, str]:
    """What a deployment sets: where the database is, its secrets, its bind address. Everything
    else keeps its default; the submitter and reconciler are off (no CI here, not on this path)."""
    return {
        "CIRELAY_HOST": "127.0.0.1",
        "CIRELAY_PORT": str(port),
        "CIRELAY_DATABASE_URL": f"sqlite:///{db}",
        "CIRELAY_API_TOKEN": BENCH_API_TOKEN,
        "CIRELAY_CALLBACK_SECRET": "bench-callback-secret",
        "CIRELAY_CI_SECRET_ID": "bench-secret-id",
        "CIRELAY_CI_SECRET_KEY": "bench-secret-key",
        "CIRELAY_SUBMITTER_ENABLED": "false",
        "CIRELAY_RECONCILE_ENABLED": "false",
    }


def _serve(kind: str, port: int, db: str, token_file: str) -> None:
    os.sched_setaffinity(0, {SERVER_CORE})
    if kind in ("bare", "parse", "floor"):
        if kind == "bare":
            app = _bare_app()
        elif kind == "parse":
            app = _parse_app()
        else:
            app = _floor_app(db)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return
    environ = _cirelay_environ(db, port)
    settings = Settings.load(environ)
    job_id = asyncio.run(_submitted_job(db))
    Path(token_file).write_text(callback_token(settings.callback_key, job_id))
    if kind == "cirelay":
        os.environ.update(environ)
        sys.exit(cli.main(["serve"]))
    configure_logging(settings)
    app = create_app(settings)
    loop = uvloop.new_event_loop()  # as service.cli runs the app
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


async def _submitted_job(db: str) -> str:
    """The job whose batch the callbacks report on (its token is in every callback URL)."""
    database = await Database.open(db)
    try:
        job = await submitted_job(await SQLiteJobQueue.open(database))
    finally:
        await database.close()
    return job.id


# --- the driver ---------------------------------------------------------------------------------


def _start_server(
    kind: str, workdir: Path, *, wrapper: Sequence[str] = (), start_seconds: float = 30
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start one server (its command run under ``wrapper``, e.g. valgrind); (process, port,
    the token of its callback URL)."""
    port = free_port()
    db = workdir / f"{kind}-{port}.db"
    token_file = workdir / f"{kind}-{port}.token"
    # The service's log lines (the access log among them) go where a deployment's would: a file.
    log = (workdir / f"{kind}-{port}.log").open("wb")
    if kind == "peer":
        cmd = ["taskset", "-c", str(SERVER_CORE), *wrapper, str(peer.binary("http"))]
        cmd += ["-c", str(peer.config("http.yaml"))]
        environ = {"PEER_PORT": str(port), "PEER_DB": str(db), "PEER_SOURCE": "http"}
        environ["PEER_DIR"] = str(peer.SOURCE)
        proc = subprocess.Popen(
            cmd, env={**os.environ, **environ}, stdout=subprocess.DEVNULL, stderr=log
        )
    else:
        cmd = [*wrapper, sys.executable, "-m", "tests.bench.bench_callbacks", "--serve", kind]
        cmd += ["--port", str(port), "--db", str(db), "--token-file", str(token_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    needs_token = kind.startswith("cirelay")
    deadline = time.monotonic() + start_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server exited with {proc.returncode}")
        ready = not needs_token or token_file.exists()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if ready:
                    token = token_file.read_text() if needs_token else kind
                    return proc, port, token
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


def _write_samples(workdir: Path) -> None:
    """The bodies wrk posts: ``compact.*`` as the emulator sends a Transcode TaskFinish, and
    ``full.*`` the documented sample with its MediaInfo (4.4 KB of XML)."""
    for fmt in ("xml", "json"):
        body, _ = task_finish(COMPACT_DETAIL, fmt.upper(), random.Random(3))
        (workdir / f"compact.{fmt}").write_bytes(body)
        (workdir / f"full.{fmt}").write_bytes((FIXTURES / f"transcode.{fmt}").read_bytes())
    (workdir / "callbacks.lua").write_text(LUA)


def _wrk(
    url: str, sample: Path, seconds: float, connections: int, run: str, workdir: Path
) -> dict[str, Any]:
    script = workdir / "callbacks.lua"
    ctype = "application/json" if sample.suffix == ".json" else "application/xml"
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
        str(sample),
        SAMPLE_JOB_ID,
        run,
        ctype,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return wrk.parse(out)


def _stored(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(kind: str, sample: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    proc, port, token = _start_server(kind, workdir)
    try:
        url = f"http://127.0.0.1:{port}/v1/callbacks/{token}"
        warm = _wrk(url, sample, args.warmup, args.connections, f"w{port}", workdir)
        cpu = _cpu_seconds(proc.pid)
        result = _wrk(url, sample, args.seconds, args.connections, f"r{port}", workdir)
        # CPU time per answer: less at the mercy of other load on the machine than req/s.
        result["cpu_us"] = (_cpu_seconds(proc.pid) - cpu) / max(result["requests"], 1) * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result["kind"] = kind
    durable = kind in DURABLE
    if durable:
        # Every answer was a new row committed before it was sent; wrk may stop counting a few
        # in flight at the end, so the store holds at least what wrk saw answered.
        result["answered"] = warm["requests"] + result["requests"]
        table = "bodies" if kind == "floor" else "events"
        result["stored"] = _stored(workdir / f"{kind}-{port}.db", table)
    print(
        f"{kind:13} {sample.name:12} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:6.2f} ms  cpu {result['cpu_us']:5.0f} us/req"
        f"  non-2xx {result['non_2xx']}"
        + (f"  answered {result['answered']} stored {result['stored']}" if durable else ""),
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--samples",
        default="compact.xml,compact.json,full.xml,full.json",
        help="bodies to post (compact: as the emulator sends; full: with MediaInfo)",
    )
    parser.add_argument(
        "--kinds", default=DEFAULT_KINDS, help="servers to measure besides bare (see above)"
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, args.db, args.token_file)
        return
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset: apt-get install wrk util-linux")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for the server, one for wrk")
    summary: dict[str, Any] = {"connections": args.connections, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="cirelay-bench-") as tmp:
        workdir = Path(tmp)
        _write_samples(workdir)
        kinds = [kind for kind in args.kinds.split(",") if kind in KINDS and kind != "bare"]
        for name in args.samples.split(","):
            sample = workdir / name
            bare = _measure("bare", sample, args, workdir)
            summary[name] = {"bare": bare}
            for kind in kinds:
                result = _measure(kind, sample, args, workdir)
                result["ratio"] = round(result["rps"] / bare["rps"], 3)
                summary[name][kind] = result
                print(f"ratio {name} {kind}/bare: {result['ratio']:.3f}", flush=True)
            measured = summary[name]
            for kind in ("cirelay", "cirelay-nolog"):
                if kind in measured and "peer" in measured:
                    ratio = measured[kind]["rps"] / measured["peer"]["rps"]
                    measured[kind]["ratio_to_peer"] = round(ratio, 3)
                    print(f"ratio {name} {kind}/peer: {ratio:.3f}", flush=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""CPU instructions per callback, server by server (callgrind): what wrk's req/s is made of, free
of the noise of a shared machine.

    python -m tests.bench.instructions [--requests 300] [--kinds bare,peer,cirelay,...]

Each server of ``bench_callbacks`` runs under ``valgrind --tool=callgrind``; after a warm-up its
counters are zeroed, ``--requests`` unique callbacks are posted one after another on one
keep-alive connection, and the counters are dumped: the total over every thread of the process
(the event loop, the database thread, Go's runtime) divided by the requests. Needs valgrind.
A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.bench.bench_callbacks import KINDS, SAMPLE_JOB_ID, _start_server, _write_samples

WARMUP = 50


def _post(conn: http.client.HTTPConnection, url: str, body: bytes, ctype: str) -> None:
    conn.request("POST", url, body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"{url}: answered {response.status}")


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def measure(kind: str, sample: Path, requests: int, workdir: Path) -> int:
    """Instructions per request of ``kind`` posting ``sample``."""
    out = workdir / f"callgrind.{kind}.{sample.name}.out"
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    proc, port, token = _start_server(kind, workdir, wrapper=wrapper, start_seconds=300)
    try:
        body = sample.read_bytes()
        ctype = "application/json" if sample.suffix == ".json" else "application/xml"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        url = f"/v1/callbacks/{token}"
        for n in range(WARMUP):
            _post(conn, url, body.replace(SAMPLE_JOB_ID.encode(), f"w{n}".encode()), ctype)
        _control(proc.pid, "--zero")
        for n in range(requests):
            _post(conn, url, body.replace(SAMPLE_JOB_ID.encode(), f"r{n}".encode()), ctype)
        _control(proc.pid, "--dump")
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    total = 0
    for dump in workdir.glob(f"{out.name}.*"):
        # Only the dump asked for above counts (not the one at exit).
        if dump.name.endswith(".1") or re.search(r"\.\d+\.1$", dump.name):
            summary = re.search(r"^summary:\s+(\d+)", dump.read_text(), re.MULTILINE)
            total += int(summary.group(1)) if summary else 0
    return total // requests


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--kinds", default="bare,cirelay,cirelay-nolog")
    parser.add_argument("--samples", default="compact.xml,compact.json,full.xml,full.json")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="cirelay-instructions-") as tmp:
        workdir = Path(tmp)
        _write_samples(workdir)
        for name in args.samples.split(","):
            for kind in args.kinds.split(","):
                if kind not in KINDS:
                    raise SystemExit(f"unknown server {kind!r}: one of {KINDS}")
                count = measure(kind, workdir / name, args.requests, workdir)
                print(f"{kind:14} {name:13} {count:10,} instructions/request", flush=True)


if __name__ == "__main__":
    main()

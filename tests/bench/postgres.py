"""A PostgreSQL server for benchmarks: started with tests/postgres/server.sh, pinned to one core.

The tests' fixture plugin (tests/postgres_server.py) is reused for starting, stopping and creating
databases, so the benchmarks run the same server as the tests do. The server's processes are
pinned to ``core`` (the load generator's, not the measured client's), so client and database do
not compete for one core. Its watchdog stops it if the benchmark dies.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.postgres_server import PostgresServer, run_script


@contextmanager
def postgres(core: int | None) -> Iterator[PostgresServer]:
    directory = Path(tempfile.mkdtemp(prefix="cirelay-bench-postgres-"))
    run_script("start", directory)
    try:
        server = PostgresServer.from_env_file(directory / "postgres.env")
        if core is not None:
            _pin(directory / "data" / "postmaster.pid", core)
        yield server
    finally:
        run_script("stop", directory)


def fresh_database(server: PostgresServer) -> str:
    """The URL of a new empty database on ``server``."""
    return server.url_for(server.create_database())


def _pin(pid_file: Path, core: int) -> None:
    """The postmaster and the processes it started so far; backends forked later inherit it."""
    postmaster = pid_file.read_text().split("\n", 1)[0].strip()
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for pid in (postmaster, *children):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(core), pid], check=True, capture_output=True
        )

"""pytest plugin: one real PostgreSQL server per test run (via tests/postgres/server.sh) and a new
empty database for each test that asks for one.

Fixtures:

- ``postgres_url`` (function scope): the ``postgresql://user:password@127.0.0.1:PORT/NAME`` URL of
  a database created for this test (``CREATE DATABASE``, about 0.2 s) and dropped after it, open
  connections and all. This is what a test sets as ``CIRELAY_DATABASE_URL``.
- ``postgres_server`` (session scope): the running server (a ``PostgresServer``), started the
  first time a test asks for it (a run without PostgreSQL tests never pays for it) and stopped,
  its directory deleted, when the run ends. If the test process dies instead, the script's
  watchdog stops it. Tests use it to take the database away: ``halt()`` (a crash-like stop) and
  ``resume()``, or ``restart()``; these block for about a second, so async tests call them through
  ``asyncio.to_thread``. A server a test left halted is resumed before its database is dropped.

Tests that use either fixture are marked ``postgres`` automatically, so ``-m "not postgres"``
leaves them out. A test that reaches them only through ``request.getfixturevalue`` (a backend
parameter) must carry the mark itself: ``pytest.param("postgres", marks=pytest.mark.postgres)``.

Set ``CIRELAY_TEST_POSTGRES_ENV`` to the ``postgres.env`` of a server already running
(``server.sh start DIR`` writes ``DIR/postgres.env``) to reuse it across runs while developing.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pulsar_broker import parse_env_file

SCRIPT = Path(__file__).resolve().parent / "postgres" / "server.sh"
REUSE_ENV = "CIRELAY_TEST_POSTGRES_ENV"
WATCH_ENV = "CIRELAY_POSTGRES_WATCH_PID"


class PostgresScriptError(RuntimeError):
    """server.sh or psql failed; the message carries its output (with the server's log tail)."""


def run_script(command: str, directory: Path, *, owned: bool = True) -> None:
    """``server.sh COMMAND DIR``. A server this run ``owned`` (started) is tied to this process
    by the script's watchdog; a reused one must outlive the run."""
    env = dict(os.environ)
    env.pop(WATCH_ENV, None)
    if owned:
        env[WATCH_ENV] = str(os.getpid())
    done = subprocess.run(
        [str(SCRIPT), command, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PostgresScriptError(
            f"server.sh {command} {directory} exited {done.returncode}:\n{done.stderr}"
        )


@dataclass
class PostgresServer:
    """A running server: ``url`` of its own database, the superuser's credentials, its files."""

    url: str
    host: str
    port: int
    user: str
    password: str
    database: str
    dir: Path
    log_file: Path
    bindir: Path
    owned: bool = True  # started by this test run (not reused through CIRELAY_TEST_POSTGRES_ENV)
    halted: bool = field(default=False, init=False)

    @classmethod
    def from_env_file(cls, path: Path, *, owned: bool = True) -> PostgresServer:
        env = parse_env_file(path.read_text())
        return cls(
            url=env["DATABASE_URL"],
            host=env["PGHOST"],
            port=int(env["PGPORT"]),
            user=env["PGUSER"],
            password=env["PGPASSWORD"],
            database=env["PGDATABASE"],
            dir=Path(env["POSTGRES_DIR"]),
            log_file=Path(env["POSTGRES_LOG"]),
            bindir=Path(env["POSTGRES_BINDIR"]),
            owned=owned,
        )

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def halt(self) -> None:
        """Crash-like stop (every backend dies at once) keeping port and data. Blocking."""
        run_script("halt", self.dir, owned=self.owned)
        self.halted = True

    def resume(self) -> None:
        """Start a halted server again (crash recovery included); returns once it accepts
        connections. Blocking."""
        run_script("resume", self.dir, owned=self.owned)
        self.halted = False

    def restart(self) -> None:
        """halt + resume. Blocking."""
        self.halt()
        self.resume()

    def sql(self, statement: str) -> str:
        """Runs one statement as the superuser in the ``postgres`` database; its unaligned output.
        Blocking (psql)."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-w",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                statement,
            ],
            env={
                **os.environ,
                "PGHOST": self.host,
                "PGPORT": str(self.port),
                "PGUSER": self.user,
                "PGPASSWORD": self.password,
            },
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresScriptError(
                f"psql {statement!r} exited {done.returncode}:\n{done.stderr}"
            )
        return done.stdout

    def create_database(self) -> str:
        """A new empty database (a copy of template1); its name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drops it even while connections are open (a test's pool that was never closed)."""
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def reusable_env_file() -> Path | None:
    named = os.environ.get(REUSE_ENV)
    if named and Path(named).is_file():
        return Path(named)
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    reused = reusable_env_file()
    if reused is not None:
        yield PostgresServer.from_env_file(reused, owned=False)
        return
    # Not under pytest's basetemp: that is private to root (0700), and the cluster runs as the
    # unprivileged `postgres` user, which must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix="cirelay-postgres-"))
    run_script("start", directory)
    try:
        yield PostgresServer.from_env_file(directory / "postgres.env")
    finally:
        run_script("stop", directory)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    try:
        yield postgres_server.url_for(name)
    finally:
        if postgres_server.halted:
            postgres_server.resume()
        postgres_server.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)

"""tests/postgres/server.sh and the fixtures of tests/postgres_server.py: a real server, password
auth, a new database per test, and no committed row lost when the server dies."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.postgres_server import SCRIPT, WATCH_ENV, PostgresServer
from tests.pulsar_broker import parse_env_file


async def user_tables(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await connection.close()
    return [row["table_name"] for row in rows]


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_a_new_empty_database(postgres_url: str, run: int) -> None:
    # The second run would find the first one's table if the database were shared.
    assert await user_tables(postgres_url) == []
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("CREATE TABLE jobs (id bigint PRIMARY KEY, run int NOT NULL)")
        await connection.execute("INSERT INTO jobs VALUES (1, $1)", run)
        assert await connection.fetchval("SELECT run FROM jobs WHERE id = 1") == run
    finally:
        await connection.close()


def test_the_url_has_the_documented_form(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    pattern = r"postgresql://([^:@/]+):([^@/]+)@127\.0\.0\.1:(\d+)/(\w+)"
    server = re.fullmatch(pattern, postgres_server.url)
    test = re.fullmatch(pattern, postgres_url)
    assert server is not None
    assert test is not None
    assert server.groups()[:3] == test.groups()[:3]
    assert test.group(4) != server.group(4)
    env = parse_env_file((postgres_server.dir / "postgres.env").read_text())
    assert env["DATABASE_URL"] == postgres_server.url


async def test_a_wrong_password_is_refused(postgres_server: PostgresServer) -> None:
    wrong = postgres_server.url.replace(f":{postgres_server.password}@", ":not-the-password@")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


def test_the_server_runs_as_an_unprivileged_user(postgres_server: PostgresServer) -> None:
    data = Path(postgres_server.sql("SHOW data_directory").strip())
    assert data.is_relative_to(postgres_server.dir)
    assert data.stat().st_uid != 0


async def test_a_dropped_database_is_gone_even_with_a_connection_open(
    postgres_server: PostgresServer,
) -> None:
    name = await asyncio.to_thread(postgres_server.create_database)
    connection = await asyncpg.connect(postgres_server.url_for(name))
    try:
        await asyncio.to_thread(postgres_server.drop_database, name)
    finally:
        connection.terminate()
    listed = await asyncio.to_thread(
        postgres_server.sql, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    )
    assert listed.strip() == "0"


async def test_committed_rows_survive_a_halt_under_writes_and_open_ones_do_not(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    setup = await asyncpg.connect(postgres_url)
    await setup.execute("CREATE TABLE rows (id bigint PRIMARY KEY)")
    await setup.close()
    acknowledged: list[int] = []
    enough = asyncio.Event()

    async def write_until_the_server_dies() -> None:
        connection = await asyncpg.connect(postgres_url)
        try:
            for row in range(1_000_000):
                await connection.execute("INSERT INTO rows VALUES ($1)", row)
                acknowledged.append(row)  # only once the commit returned
                if row == 200:
                    enough.set()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return  # the halt; a failure before it leaves too few rows acknowledged
        finally:
            enough.set()
            connection.terminate()

    open_transaction = await asyncpg.connect(postgres_url)
    await open_transaction.execute("BEGIN; INSERT INTO rows VALUES (-1)")
    writer = asyncio.create_task(write_until_the_server_dies())
    await enough.wait()
    await asyncio.to_thread(postgres_server.halt)
    await writer
    open_transaction.terminate()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(postgres_url)

    await asyncio.to_thread(postgres_server.resume)
    connection = await asyncpg.connect(postgres_url)
    try:
        stored = {row["id"] for row in await connection.fetch("SELECT id FROM rows")}
    finally:
        await connection.close()
    assert len(acknowledged) > 200
    assert set(acknowledged) - stored == set(), "acknowledged commits lost"
    assert -1 not in stored


def script(command: str, directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command, str(directory)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_start_writes_the_env_file_and_stop_removes_the_directory(tmp_path: Path) -> None:
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"cirelay-pg-{os.getpid()}-{tmp_path.name}"
    started = script("start", directory)
    assert started.returncode == 0, started.stderr
    try:
        server = PostgresServer.from_env_file(directory / "postgres.env")
        assert server.sql("SELECT current_database()").strip() == "postgres"
        assert script("resume", directory).returncode != 0, "resume of a running server"
        assert script("halt", directory).returncode == 0
        assert script("halt", directory).returncode == 0, "halt of a halted server is a no-op"
        assert script("resume", directory).returncode == 0
        assert server.sql("SELECT 1").strip() == "1"
    finally:
        stopped = script("stop", directory)
    assert stopped.returncode == 0, stopped.stderr
    assert not directory.exists()
    assert script("stop", directory).returncode == 0, "stop of a stopped server is a no-op"


@pytest.mark.slow
def test_the_watchdog_stops_the_server_when_the_test_process_dies(tmp_path: Path) -> None:
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"cirelay-pg-{os.getpid()}-{tmp_path.name}"
    test_process = subprocess.Popen(["sleep", "infinity"])
    try:
        started = script("start", directory, **{WATCH_ENV: str(test_process.pid)})
        assert started.returncode == 0, started.stderr
        watchdog = (directory / "watchdog.pid").read_text().strip()
        data = directory / "data"
        postmaster = (data / "postmaster.pid").read_text().split()[0]
    finally:
        test_process.kill()
        test_process.wait()
    # The watchdog exits once its `stop` is done; tail waits for that without polling here.
    subprocess.run(["tail", f"--pid={watchdog}", "-f", "/dev/null"], timeout=60, check=True)
    assert not directory.exists()
    assert not Path(f"/proc/{postmaster}").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to `postgres`")
def test_start_refuses_a_directory_the_postgres_user_cannot_reach(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    started = script("start", private / "cluster")
    assert started.returncode != 0
    assert "postgres cannot write" in started.stderr

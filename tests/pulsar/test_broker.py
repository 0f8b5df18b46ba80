"""The test broker itself (tests/pulsar/standalone.sh through the ``pulsar_broker`` fixture): JWT
auth as TDMQ uses it, the admin API, persistence across restarts, and the script's failure paths."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulsar
import pytest

from tests.pulsar_broker import SCRIPT, PulsarBroker, hs256_token, parse_env_file

# A client the broker refuses retries until its operation time-out: keep that short there.
REFUSED_CLIENT_TIMEOUT = 2


@contextlib.contextmanager
def connected(broker: PulsarBroker, token: str | None, timeout: int = 30) -> Iterator[Any]:
    authentication = {} if token is None else {"authentication": pulsar.AuthenticationToken(token)}
    client = pulsar.Client(
        broker.url,
        operation_timeout_seconds=timeout,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
        **authentication,
    )
    try:
        yield client
    finally:
        client.close()


def new_topic(prefix: str) -> str:
    return f"persistent://public/default/{prefix}-{uuid.uuid4().hex[:12]}"


def script(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        check=False,
    )


def broker_pid(broker: PulsarBroker) -> int:
    return int(parse_env_file((broker.dir / "pulsar.env").read_text())["PULSAR_PID"])


def await_exit(pid: int) -> None:
    """Block until process ``pid`` (not our child) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(120_000), f"process {pid} still running after 120 s"
    finally:
        os.close(fd)


def log_mentions(broker: PulsarBroker, text: str) -> int:
    return broker.log_file.read_text().count(text)


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


# --- auth ----------------------------------------------------------------------------------------


def test_the_superuser_token_produces_and_consumes(pulsar_broker: PulsarBroker) -> None:
    name = new_topic("auth-ok")
    with connected(pulsar_broker, pulsar_broker.token) as client:
        consumer = client.subscribe(name, "sub")
        client.create_producer(name).send(b"hello")
        message = consumer.receive(timeout_millis=30_000)
        consumer.acknowledge(message)
    assert message.data() == b"hello"


def test_a_token_signed_with_another_key_is_refused(pulsar_broker: PulsarBroker) -> None:
    forged = hs256_token(b"not the broker's secret key, 32b", "admin")
    refusal = "JWT signature does not match"
    before = log_mentions(pulsar_broker, refusal)
    # The broker drops the connection; the client retries until its operation time-out.
    with (
        connected(pulsar_broker, forged, REFUSED_CLIENT_TIMEOUT) as client,
        pytest.raises(pulsar.Timeout),
    ):
        client.create_producer(new_topic("auth-forged"))
    assert log_mentions(pulsar_broker, refusal) > before
    with pytest.raises(urllib.error.HTTPError) as refused:
        pulsar_broker.admin("GET", "/admin/v2/clusters", token=forged)
    assert refused.value.code == 401


def test_a_client_without_a_token_is_refused(pulsar_broker: PulsarBroker) -> None:
    refusal = "No anonymous role"
    before = log_mentions(pulsar_broker, refusal)
    with (
        connected(pulsar_broker, None, REFUSED_CLIENT_TIMEOUT) as client,
        pytest.raises(pulsar.Timeout),
    ):
        client.create_producer(new_topic("auth-none"))
    assert log_mentions(pulsar_broker, refusal) > before


def test_another_role_authenticates_but_needs_a_grant(pulsar_broker: PulsarBroker) -> None:
    role = f"reader-{uuid.uuid4().hex[:8]}"
    name = new_topic("auth-role")
    with connected(pulsar_broker, pulsar_broker.token_for(role)) as client:
        with pytest.raises(pulsar.AuthorizationError):
            client.create_producer(name)
        pulsar_broker.admin_post(
            f"/admin/v2/namespaces/public/default/permissions/{role}", ["produce", "consume"]
        )
        client.create_producer(name).send(b"granted")


def test_tokens_minted_in_python_match_the_scripts(pulsar_broker: PulsarBroker) -> None:
    assert pulsar_broker.token_for("admin") == pulsar_broker.token
    minted = script("token", str(pulsar_broker.dir), "someone")
    assert minted.returncode == 0, minted.stderr
    assert minted.stdout.strip() == pulsar_broker.token_for("someone")


# --- admin API -----------------------------------------------------------------------------------


def test_the_admin_api_serves_the_superuser(pulsar_broker: PulsarBroker) -> None:
    assert pulsar_broker.admin_get("/admin/v2/clusters") == ["standalone"]
    assert "public/default" in pulsar_broker.admin_get("/admin/v2/namespaces/public")
    with pytest.raises(urllib.error.HTTPError) as refused:
        pulsar_broker.admin("GET", "/admin/v2/clusters", token="not-a-jwt")
    assert refused.value.code == 401


# --- persistence ---------------------------------------------------------------------------------


def test_messages_and_acks_survive_a_restart(pulsar_broker: PulsarBroker) -> None:
    name = new_topic("restart")
    bodies = [f"m{i}".encode() for i in range(20)]
    with connected(pulsar_broker, pulsar_broker.token) as client:
        consumer = client.subscribe(name, "sub")
        producer = client.create_producer(name, batching_enabled=False)
        for body in bodies:
            producer.send(body)
        for _ in range(5):
            consumer.acknowledge(consumer.receive(timeout_millis=30_000))
        consumer.close()  # flushes the grouped acknowledgements to the broker
    pid_before = broker_pid(pulsar_broker)

    pulsar_broker.restart()

    env = parse_env_file((pulsar_broker.dir / "pulsar.env").read_text())
    assert int(env["PULSAR_PID"]) != pid_before
    assert env["PULSAR_URL"] == pulsar_broker.url
    assert env["PULSAR_ADMIN_URL"] == pulsar_broker.admin_url
    with connected(pulsar_broker, pulsar_broker.token) as client:
        consumer = client.subscribe(name, "sub")
        received = []
        for _ in range(15):
            message = consumer.receive(timeout_millis=30_000)
            consumer.acknowledge(message)
            received.append(message.data())
    # In order on one consumer: a lost ack would bring m0..m4 back first.
    assert received == bodies[5:]


def test_a_halted_broker_frees_its_ports_and_resumes_on_them(pulsar_broker: PulsarBroker) -> None:
    name = new_topic("halt")
    with connected(pulsar_broker, pulsar_broker.token) as client:
        client.subscribe(name, "sub").close()
        client.create_producer(name).send(b"kept")
    env = parse_env_file((pulsar_broker.dir / "pulsar.env").read_text())
    ports = [int(env[key]) for key in ("PULSAR_BROKER_PORT", "PULSAR_WEB_PORT")]

    pulsar_broker.halt()
    try:
        assert all(refuses_connections(port) for port in ports)
    finally:
        pulsar_broker.resume()

    assert not any(refuses_connections(port) for port in ports)
    with connected(pulsar_broker, pulsar_broker.token) as client:
        consumer = client.subscribe(name, "sub")
        assert consumer.receive(timeout_millis=30_000).data() == b"kept"


# --- the script ----------------------------------------------------------------------------------


def test_the_script_without_a_command_prints_its_usage() -> None:
    done = script()
    assert done.returncode == 2
    assert "standalone.sh start DIR" in done.stderr


def test_resume_needs_a_halted_broker(tmp_path: Path) -> None:
    done = script("resume", str(tmp_path))
    assert done.returncode == 1
    assert "no broker state" in done.stderr


def test_start_refuses_a_directory_with_a_running_broker(pulsar_broker: PulsarBroker) -> None:
    done = script("start", str(pulsar_broker.dir))
    assert done.returncode == 1
    assert "already running" in done.stderr


def test_a_role_outside_the_token_alphabet_is_refused(pulsar_broker: PulsarBroker) -> None:
    done = script("token", str(pulsar_broker.dir), 'x","sub":"admin')
    assert done.returncode == 1
    assert "role must match" in done.stderr


def test_a_broker_that_cannot_start_fails_with_its_log(
    pulsar_broker: PulsarBroker, tmp_path: Path
) -> None:
    # Depends on pulsar_broker only so that the jar cache is ready.
    done = script("start", str(tmp_path / "broken"), CIRELAY_PULSAR_HEAP="1m")
    assert done.returncode == 1
    assert "did not become ready" in done.stderr
    assert "Initial heap size set to a larger value than the maximum heap size" in done.stderr
    assert not (tmp_path / "broken" / "pulsar.pid").exists()


def test_the_watchdog_stops_a_broker_whose_test_run_died(
    pulsar_broker: PulsarBroker, tmp_path: Path
) -> None:
    # A stand-in for the test process: it lives until its stdin closes.
    test_run = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    directory = tmp_path / "orphan"
    try:
        started = script("start", str(directory), CIRELAY_PULSAR_WATCH_PID=str(test_run.pid))
        assert started.returncode == 0, started.stderr
        broker = int(parse_env_file((directory / "pulsar.env").read_text())["PULSAR_PID"])
        watchdog = int((directory / "watchdog.pid").read_text())
    finally:
        assert test_run.stdin is not None
        test_run.stdin.close()
        test_run.wait()
    # The watchdog becomes `standalone.sh stop`: once it is gone the broker and its data are too.
    await_exit(watchdog)
    await_exit(broker)
    assert not (directory / "data").exists()
    assert not (directory / "pulsar.env").exists()

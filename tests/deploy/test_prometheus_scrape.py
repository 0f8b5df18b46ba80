"""A real Prometheus (Debian's package) scrapes a real `cirelay serve --sandbox` on loopback while
a job runs end to end; what the run produced is read back through Prometheus's HTTP API, with
the alert rules and the dashboard's queries evaluated on those series."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service import __version__
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import as_promql, dashboard_queries
from tests.ports import free_port

pytestmark = pytest.mark.slow

WAIT = 60  # seconds: a safety net against hangs, never what the test measures
POLL = 0.2  # Prometheus offers nothing to await: its query API is polled until the deadline

# What one Transcode batch over a three-object prefix leaves behind, as PromQL → value.
EXPECTED = {
    f'cirelay_build_info{{version="{__version__}"}}': 1,
    'up{job="cirelay"}': 1,
    'sum(cirelay_http_requests_total{method="POST", route="/v1/jobs", status="202"})': 1,
    'sum(cirelay_jobs_enqueued_total{tag="Transcode", via="http"})': 1,
    'sum(cirelay_jobs_submitted_total{outcome="created"})': 1,
    'sum(cirelay_ci_requests_total{operation="create", status="200"})': 1,
    'sum(cirelay_ci_request_duration_seconds_count{operation="create"})': 1,
    'sum(cirelay_events_received_total{source="http"})': 3,
    'sum(cirelay_jobs_finished_total{tag="Transcode", state="succeeded"})': 1,
    'sum(cirelay_job_duration_seconds_count{tag="Transcode"})': 1,
    'cirelay_queue_depth{state="succeeded"}': 1,
    'cirelay_queue_depth{state="queued"}': 0,
    "cirelay_ci_throttled_total": 0,
}

# Panels whose first query must show data after such a run (the others may rightly be empty,
# e.g. rejected events, or NaN, e.g. a quantile of a histogram that saw nothing recently).
PANELS_WITH_DATA = [
    "Version",
    "Targets up",
    "Queue depth by state",
    "Jobs enqueued",
    "Submission outcomes",
    "CI requests by operation and status",
    "Events received",
    "HTTP requests by route and status",
]


class Child:
    """A process whose stderr is read as it is written, so a test can await a log line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, matches: Callable[[str], bool], count: int = 1) -> str:
        async with asyncio.timeout(WAIT):
            while True:
                self._changed.clear()
                seen = [line for line in self.lines if matches(line)]
                if len(seen) >= count:
                    return seen[count - 1]
                if self._reader.done():
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(f"process ended first:\n{tail}")
                await self._changed.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(WAIT):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


@asynccontextmanager
async def child(*argv: str, env: dict[str, str]) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    process = Child(proc)
    try:
        yield process
    finally:
        await process.stop()


def log_event(name: str) -> Callable[[str], bool]:
    def matches(line: str) -> bool:
        try:
            return bool(json.loads(line).get("event") == name)
        except (json.JSONDecodeError, AttributeError):
            return False

    return matches


def cirelay_environment(tmp_path: Path) -> dict[str, str]:
    # Exactly the settings this test chooses, none leaking in from the outer shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env.update(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_LOG_FORMAT": "json",
            "CIRELAY_EMULATOR_JOB_SECONDS": "0.05",
            "CIRELAY_RECONCILE_SECONDS": "0.2",
            "CIRELAY_RECONCILE_GRACE_SECONDS": "0.2",
        }
    )
    return env


def prometheus_config(tmp_path: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "cirelay",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def transcode_batch(bucket: str) -> dict[str, Any]:
    return {
        "Name": "scrape-test",
        "Type": "Job",
        "Input": {"Prefix": "input"},
        "Operation": {
            "Tag": "Transcode",
            "QueueId": "p893bcda225bf4945a378da6662e81a89",
            "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
            "Output": {
                "Region": "ap-guangzhou",
                "Bucket": bucket,
                "Object": "output/${InventoryTriggerJobId}/${InputName}.mp4",
            },
        },
    }


class PrometheusAPI:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def series(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's answer: one entry per series."""
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single sample an instant query returns; None for an empty answer."""
        series = await self.series(expr)
        if not series:
            return None
        [sample] = series
        return float(sample["value"][1])

    async def until(self, check: Callable[[], Any]) -> Any:
        """Poll ``check`` until it returns something truthy; its last answer at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            answer = await check()
            if answer or loop.time() > deadline:
                return answer
            await asyncio.sleep(POLL)


async def test_prometheus_scrapes_what_an_end_to_end_run_produced(
    tools: dict[str, Path], tmp_path: Path
) -> None:
    port, prometheus_port = free_port(), free_port()
    cirelay_argv = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    prometheus_argv = [
        str(tools["prometheus"]),
        f"--config.file={prometheus_config(tmp_path, f'127.0.0.1:{port}')}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    async with (
        child(*cirelay_argv, env=cirelay_environment(tmp_path)) as cirelay,
        child(*prometheus_argv, env=dict(os.environ)) as prometheus,
        aiohttp.ClientSession() as session,
    ):
        ready = json.loads(await cirelay.wait_for(log_event("sandbox_ready")))
        await prometheus.wait_for(lambda line: "Server is ready to receive web requests" in line)
        api = PrometheusAPI(session, f"http://127.0.0.1:{prometheus_port}")

        async def listening() -> bool:
            # sandbox_ready is logged by the app's start-up, just before the socket is bound.
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        assert await api.until(listening), "cirelay never answered /healthz"

        headers = {"Authorization": f"Bearer {ready['bearer']}"}
        url = f"http://127.0.0.1:{port}/v1/jobs"
        async with session.post(url, json=transcode_batch(ready["bucket"]), headers=headers) as r:
            assert r.status == 202, await r.text()
        await cirelay.wait_for(log_event("job_finished"))

        async def scraped() -> dict[str, float | None]:
            values = {expr: await api.value(expr) for expr in EXPECTED}
            return values if values == EXPECTED else {}

        assert await api.until(scraped) == EXPECTED, {e: await api.value(e) for e in EXPECTED}

        async def evaluated() -> list[dict[str, Any]]:
            groups = (await api.get("/api/v1/rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if all(rule["health"] != "unknown" for rule in rules) else []

        rules = await api.until(evaluated)
        assert rules, "the alert rules were never evaluated"
        assert {rule["name"]: (rule["health"], rule.get("lastError", "")) for rule in rules} == {
            rule["name"]: ("ok", "") for rule in rules
        }
        # A healthy run raises nothing.
        assert {rule["name"]: rule["state"] for rule in rules} == {
            rule["name"]: "inactive" for rule in rules
        }

        for where, expr in dashboard_queries():
            query = as_promql(expr, rate_interval="1m")
            series = await api.series(query)  # every query runs without error
            if where in {f"panel {title!r} A" for title in PANELS_WITH_DATA}:
                # A rate() shows a new series from its second scrape on.
                series = await api.until(functools.partial(api.series, query))
                assert series, f"{where} shows nothing: {expr}"

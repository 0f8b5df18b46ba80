"""An emulator on a real loopback port, the official SDK pointed at it, and a callback receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from qcloud_cos import CosConfig, CosS3Client

from service.ci.signing import Credentials, sign
from service.emulator.app import create_emulator_app
from service.emulator.jobs import Engine
from service.emulator.keys import ENGINE, STATS
from service.emulator.stats import Stats
from service.settings import Settings

SECRET_ID = "AKIDemulatortest"
SECRET_KEY = "emulator-test-key"
BUCKET = "demo-1250000000"
REGION = "ap-guangzhou"
HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"
QUEUE_ID = "p893bcda225bf4945a378da6662e81a89"
WAIT = 20  # seconds: a safety net against hangs, never what a test measures


def emulator_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "emulator_credentials": f"{SECRET_ID}:{SECRET_KEY}",
        "emulator_job_seconds": 0.05,
        "emulator_seed": 7,
        "emulator_callback_retry_seconds": 0.01,
        "log_format": "json",
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.check()
    return settings


def batch_request(**operation: Any) -> dict[str, Any]:
    """The seed's sample Request as the SDK's JobBody, with Operation nodes replaced/added."""
    op: dict[str, Any] = {
        "QueueId": QUEUE_ID,
        "UserData": "this is my inventorytriggerjob",
        "Tag": "Transcode",
        "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
        "Output": {
            "Region": "ap-chongqing",
            "Bucket": "test-1234567890",
            "Object": "output/${InventoryTriggerJobId}/${InputName}.mp4",
        },
        "JobLevel": "0",
    }
    op.update(operation)
    name = op.pop("Name", "demo")
    source = op.pop("Input", {"Prefix": "input"})
    return {"Name": name, "Type": "Job", "Input": source, "Operation": op}


def sdk_for(
    port: int, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY, token: str | None = None
) -> CosS3Client:
    """The official SDK pointed at an emulator on a loopback port, as a user would point it."""
    config = CosConfig(
        Region=REGION,
        SecretId=secret_id,
        SecretKey=secret_key,
        Token=token,
        Scheme="http",
        IP="127.0.0.1",
        Port=port,
    )
    # retry=0: the SDK otherwise retries 5xx answers itself, sleeping between attempts.
    return CosS3Client(config, retry=0)


@dataclass
class Emulator:
    app: web.Application
    runner: web.AppRunner
    port: int
    running: bool = True

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE]

    @property
    def stats(self) -> Stats:
        return self.app[STATS]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sdk(
        self, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY, token: str | None = None
    ) -> CosS3Client:
        return sdk_for(self.port, secret_id, secret_key, token)

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.runner.cleanup()


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    started: list[Emulator] = []

    async def start(
        settings: Settings | None = None, *, clock: Callable[[], float] = time.time
    ) -> Emulator:
        app = create_emulator_app(settings or emulator_settings(), clock=clock)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        emulator = Emulator(app, runner, runner.addresses[0][1])
        started.append(emulator)
        return emulator

    yield start
    for emulator in reversed(started):
        await emulator.stop()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()


@dataclass
class Received:
    content_type: str
    body: bytes


@dataclass
class Receiver:
    """A callback endpoint that records what arrives and can refuse the first attempts."""

    url: str = ""
    fail_first: int = 0
    attempts: int = 0
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.changed:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                self.changed.notify_all()
                return web.Response(status=503)
            self.received.append(Received(request.headers.get("Content-Type", ""), body))
            self.changed.notify_all()
        return web.Response(text="ok")

    async def wait_for(self, count: int) -> list[Received]:
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(lambda: len(self.received) >= count)
        return list(self.received)


@pytest.fixture
async def receiver(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> Receiver:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/callback", found.handle)
    server = await aiohttp_server(app)
    found.url = str(server.make_url("/callback"))
    return found


async def wait_idle(emulator: Emulator) -> None:
    async with asyncio.timeout(WAIT):
        await emulator.engine.wait_idle()


async def raw_call(
    emulator: Emulator,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    host: str = HOST,
    credentials: Credentials | None = None,
    now: int | None = None,
    extra_query: str = "",
    headers: dict[str, str] | None = None,
    signed: bool = True,
) -> tuple[int, bytes, str]:
    """A request signed with cirelay's signer, for what the SDK cannot send (e.g. bad XML).

    Returns status, body and the x-ci-request-id header.
    """
    creds = credentials or Credentials(SECRET_ID, SECRET_KEY)
    params = params or {}
    headers = {"Host": host, "Content-Type": "application/xml", **(headers or {})}
    if signed:
        headers["Authorization"] = sign(
            creds, method, path, params, headers, now=int(time.time()) if now is None else now
        )
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
    if extra_query:
        query = f"{query}&{extra_query}" if query else extra_query
    url = emulator.endpoint + path + (f"?{query}" if query else "")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers) as response,
    ):
        return (
            response.status,
            await response.read(),
            response.headers.get("x-ci-request-id", ""),
        )

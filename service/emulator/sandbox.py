"""`cirelay serve --sandbox`: the service with an in-process emulator and generated credentials.

The emulator listens on a loopback socket bound before the settings are built, so the CI endpoint
the service is given is the one the emulator answers on.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.emulator.app import CleanupContext, emulator_ctx
from service.settings import Settings

log = structlog.get_logger(__name__)

SANDBOX_BUCKET = "sandbox-1250000000"
SANDBOX_REGION = "ap-guangzhou"
SANDBOX_API_TOKEN = "sandbox"
# Where `serve --sandbox` listens unless `--host` says otherwise: its bearer token is well known.
SANDBOX_HOST = "127.0.0.1"
# The emulator ends a batch within seconds: poll it at that pace rather than real CI's default,
# so a sandbox job shows succeeded soon after its last callback.
SANDBOX_RECONCILE_SECONDS = 2.0


def bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def sandbox_settings(settings: Settings, emulator_port: int) -> Settings:
    """``settings`` pointed at an emulator on ``emulator_port``, with defaults for the unset."""
    secret_id = f"AKIDsandbox{secrets.token_hex(8)}"
    secret_key = secrets.token_urlsafe(24)
    endpoint = f"http://127.0.0.1:{emulator_port}"
    return settings.replace(
        emulator_host="127.0.0.1",
        emulator_port=emulator_port,
        emulator_credentials=f"{secret_id}:{secret_key}",
        ci_secret_id=secret_id,
        ci_secret_key=secret_key,
        ci_token="",
        ci_endpoint=endpoint,
        ci_bucket=settings.ci_bucket or SANDBOX_BUCKET,
        ci_region=settings.ci_region or SANDBOX_REGION,
        api_token=settings.api_token or SANDBOX_API_TOKEN,
        callback_secret=settings.callback_secret or secrets.token_urlsafe(32),
        public_url=settings.public_url or f"http://127.0.0.1:{settings.port}",
        reconcile_seconds=SANDBOX_RECONCILE_SECONDS
        if settings.reconcile_seconds == _default("reconcile_seconds")
        else settings.reconcile_seconds,
    )


def _default(name: str) -> object:
    (found,) = (f.default for f in dataclasses.fields(Settings) if f.name == name)
    return found


def install_sandbox(app: web.Application, settings: Settings, sock: socket.socket) -> None:
    """Run the emulator before every context that talks to CI; announce once all are up."""
    app.cleanup_ctx.insert(0, emulator_ctx(settings, sock))
    app.cleanup_ctx.append(_ready_ctx(settings))


def _ready_ctx(settings: Settings) -> CleanupContext:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        log.info(
            "sandbox_ready",
            service_url=settings.public_url,
            emulator_url=settings.ci_endpoint,
            bucket=settings.ci_bucket,
            region=settings.ci_region,
            # Only the default is printed: a token the operator chose stays a secret.
            bearer=settings.api_token if settings.api_token == SANDBOX_API_TOKEN else "(yours)",
        )
        yield

    return ctx

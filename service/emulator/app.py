"""create_emulator_app(settings): the emulator as an aiohttp app, and contexts that run it."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from service.emulator.auth import parse_credentials
from service.emulator.delivery import Dispatcher, TdmqPublisher
from service.emulator.faults import Faults
from service.emulator.handlers import routes
from service.emulator.jobs import Engine
from service.emulator.keys import CLOCK, CREDENTIALS, ENGINE, FAULTS, SETTINGS, STATS
from service.emulator.middleware import ci_calls
from service.emulator.randomness import Randomness
from service.emulator.stats import Stats
from service.settings import Settings, SettingsError, env_name
from service.storage.sqlite.emulator import StateStore

log = structlog.get_logger(__name__)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def check_emulator(settings: Settings) -> None:
    """What the emulator needs beyond Settings.check(): at least one well-formed credential."""
    variable = env_name("emulator_credentials")
    try:
        credentials = parse_credentials(settings.emulator_credentials)
    except ValueError as exc:
        raise SettingsError(variable, str(exc)) from None
    if not credentials:
        raise SettingsError(variable, "is required: list the keys the emulator accepts (id:key)")


def create_emulator_app(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> web.Application:
    """The emulator app; ``clock`` is what signatures' key times are checked against."""
    check_emulator(settings)
    app = web.Application(middlewares=[ci_calls], client_max_size=settings.max_body_bytes)
    randomness = Randomness(settings.emulator_seed)
    stats = Stats()
    app[SETTINGS] = settings
    app[STATS] = stats
    app[CREDENTIALS] = parse_credentials(settings.emulator_credentials)
    app[CLOCK] = clock
    app[FAULTS] = Faults(settings, stats, randomness.rng("faults"))
    app.cleanup_ctx.append(_engine_ctx(randomness))
    app.add_routes(routes)
    return app


def _engine_ctx(randomness: Randomness) -> CleanupContext:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        store = await StateStore.open(settings.emulator_state) if settings.emulator_state else None
        publisher = TdmqPublisher(settings.emulator_pulsar_url, settings.emulator_pulsar_token)
        try:
            async with aiohttp.ClientSession() as session:
                dispatcher = Dispatcher(settings, session, publisher, app[STATS], randomness)
                engine = Engine(settings, dispatcher, app[STATS], randomness, store)
                app[ENGINE] = engine
                await engine.start()
                try:
                    yield
                finally:
                    await engine.stop()
        finally:
            await publisher.close()
            if store is not None:
                await store.close()

    return ctx


def emulator_ctx(settings: Settings, sock: socket.socket | None = None) -> CleanupContext:
    """A cleanup context that serves the emulator beside another app (``serve --sandbox``).

    It listens on ``sock`` when given (already bound, so the port cannot be lost in between),
    else on CIRELAY_EMULATOR_HOST:CIRELAY_EMULATOR_PORT.
    """

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(create_emulator_app(settings), access_log=None)
        await runner.setup()
        try:
            site: web.BaseSite = (
                web.SockSite(runner, sock)
                if sock is not None
                else web.TCPSite(runner, settings.emulator_host, settings.emulator_port)
            )
            await site.start()
            log.info("emulator_started", url=site.name)
            yield
        finally:
            await runner.cleanup()

    return ctx


def run_emulator(settings: Settings) -> None:
    """`cirelay emulator`: serve until SIGINT/SIGTERM."""
    url = f"http://{settings.emulator_host}:{settings.emulator_port}"
    web.run_app(
        create_emulator_app(settings),
        host=settings.emulator_host,
        port=settings.emulator_port,
        # run_app calls this once its sites listen: the moment the emulator is ready.
        print=lambda _: log.info("emulator_started", url=url),
        access_log=None,
    )

"""Typed keys of what the emulator app holds."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from service.ci.signing import Credentials
from service.emulator.auth import Target
from service.emulator.faults import Faults
from service.emulator.jobs import Engine
from service.emulator.stats import Stats
from service.settings import Settings

SETTINGS = web.AppKey("emulator_settings", Settings)
ENGINE = web.AppKey("emulator_engine", Engine)
STATS = web.AppKey("emulator_stats", Stats)
FAULTS = web.AppKey("emulator_faults", Faults)
CREDENTIALS = web.AppKey("emulator_credentials", dict[str, Credentials])
CLOCK = web.AppKey[Callable[[], float]]("emulator_clock")

# Per request, set by the middleware: the CI request id, and the bucket the signed Host names.
REQUEST_ID = web.RequestKey("emulator_request_id", str)
TARGET = web.RequestKey("emulator_target", Target)

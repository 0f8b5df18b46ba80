"""The `cirelay` command: argument parsing and process start-up, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import structlog

from service import __version__
from service.app import create_admin_app, create_app
from service.emulator.app import check_emulator, run_emulator
from service.emulator.sandbox import (
    SANDBOX_HOST,
    bind_loopback,
    install_sandbox,
    sandbox_settings,
)
from service.logging import configure_logging
from service.reference import settings_markdown
from service.server import serve_until_signalled, service_runner
from service.settings import Settings, SettingsError

log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cirelay",
        description="Drive Tencent Cloud Infinite batch media jobs: intake, queue, submit, events.",
    )
    parser.add_argument("--version", action="version", version=f"cirelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="bind address (CIRELAY_HOST)")
    serve.add_argument("--port", type=int, help="bind port (CIRELAY_PORT)")
    serve.add_argument("--config", help="TOML file with settings (CIRELAY_* names or field names)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="run a local CI emulator in-process, with generated credentials (no Tencent account)",
    )

    emulator = sub.add_parser("emulator", help="run the local Tencent CI emulator")
    emulator.add_argument("--host", help="bind address (CIRELAY_EMULATOR_HOST)")
    emulator.add_argument("--port", type=int, help="bind port (CIRELAY_EMULATOR_PORT)")
    emulator.add_argument(
        "--config", help="TOML file with settings (CIRELAY_* names or field names)"
    )

    sub.add_parser(
        "settings-reference", help="print the configuration reference (Markdown) for README"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings-reference":
        print(settings_markdown())
        return 0
    sandbox = bind_loopback() if args.command == "serve" and args.sandbox else None
    try:
        settings = Settings.load(os.environ, args.config)
        prefix = "emulator_" if args.command == "emulator" else ""
        overrides = {
            prefix + k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
        }
        settings = settings.replace(**overrides)
        if sandbox is not None:
            settings = sandbox_settings(settings, sandbox.getsockname()[1])
            if args.host is None:  # its bearer token is the well-known `sandbox`: loopback only
                settings = settings.replace(host=SANDBOX_HOST)
        settings.check()
        if args.command == "serve" and sandbox is None:
            settings.check_serve()
        if args.command == "emulator":
            check_emulator(settings)
    except SettingsError as exc:
        print(f"cirelay: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if args.command == "emulator":
        run_emulator(settings)
    if args.command == "serve":
        log.info("starting", version=__version__, host=settings.host, port=settings.port)
        app = create_app(settings)
        if sandbox is not None:
            install_sandbox(app, settings, sandbox)
        runner = service_runner(app, settings)
        listeners = [(runner, settings.host, settings.port, settings.max_connections)]
        if settings.admin_port:
            admin = service_runner(create_admin_app(app), settings)
            listeners.append(
                (admin, settings.admin_host, settings.admin_port, settings.max_connections)
            )
        asyncio.run(serve_until_signalled(listeners))
    return 0

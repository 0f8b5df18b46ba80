"""Settings and secrets for the webhook tests: an app that takes callbacks and delivers them."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from service.settings import Settings
from tests.events.support import events_settings

# Fast retries: every test that waits for a retry waits for an event, never for this schedule.
FAST_SCHEDULE = "0.02,0.02,0.02"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def webhook_settings(tmp_path: Path, **environ: str) -> Settings:
    """Callbacks taken on a per-job token (a public URL is set), loopback deliveries allowed."""
    return events_settings(
        tmp_path,
        **{
            "CIRELAY_PUBLIC_URL": "http://127.0.0.1:9",
            "CIRELAY_WEBHOOK_SECRET": new_secret(),
            "CIRELAY_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            "CIRELAY_WEBHOOK_RETRY_SCHEDULE": FAST_SCHEDULE,
            **environ,
        },
    )

"""Settings and secrets for the webhook tests: an app that takes callbacks and delivers them."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook

from service.appkeys import SETTINGS
from service.queue import JobRecord
from service.settings import Settings
from service.tokens import callback_token
from tests.events.support import events_settings
from tests.queue.rig import until
from tests.webhooks.receiver import Received

Client = TestClient[web.Request, web.Application]

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


async def post_callback(client: Client, job: JobRecord, body: bytes, content_type: str) -> None:
    token = callback_token(client.app[SETTINGS].callback_key, job.id)
    resp = await client.post(
        f"/v1/callbacks/{token}", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == 200, await resp.text()


def verify(settings: Settings, delivered: Received) -> Any:
    """What ``standardwebhooks`` makes of a delivery: raises unless its signature verifies."""
    return Webhook(settings.webhook_secret).verify(delivered.body, delivered.headers)


async def wait_for_state(client: Client, job_id: str, state: str) -> list[dict[str, Any]]:
    """The job's deliveries once all are in ``state``, read through the operator's route (the
    attempt is recorded just after the receiver answered: nothing to await)."""
    listed: list[dict[str, Any]] = []

    async def reached() -> bool:
        nonlocal listed
        resp = await client.get(f"/v1/jobs/{job_id}/deliveries")
        listed = (await resp.json())["deliveries"]
        return bool(listed) and all(d["state"] == state for d in listed)

    await until(reached, f"deliveries of {job_id} all {state}")
    return listed

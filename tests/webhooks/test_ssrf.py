"""The caller's CallBack is untrusted: refused at intake when it can be seen to be bad, and refused
again at the address actually connected to, with no redirect followed."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.appkeys import QUEUE
from service.settings import Settings, SettingsError
from service.webhooks.ssrf import AddressPolicy, DestinationRefused, GuardedResolver, parse_networks
from tests.events.support import API_TOKEN, submitted_job, task_finish_xml
from tests.queue.samples import BUCKET, REGION, request_json
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import post_callback, wait_for_state, webhook_settings

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def strict(tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    """An app with the default policy: no network opened."""
    settings = webhook_settings(tmp_path, CIRELAY_WEBHOOK_ALLOWED_NETWORKS="")
    return await aiohttp_client(create_app(settings), headers=AUTH)


@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local or metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "link-local or metadata address"),
        ("http://100.100.100.200/latest/meta-data/", "link-local or metadata address"),
        ("http://127.0.0.1:8080/hook", "loopback address 127.0.0.1"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback address 127.0.0.1"),
        ("http://localhost/hook", "localhost resolves to loopback address"),
        ("http://0.0.0.0/hook", "unspecified address"),
        ("http://224.0.0.1/hook", "multicast address"),
        ("ftp://example.com/hook", "must be an http or https URL"),
        ("file:///etc/passwd", "must be an http or https URL"),
        ("http:///hook", "must name a host"),
        ("http://example.com:99999/hook", "is not a valid URL"),
    ],
)
async def test_intake_refuses_a_callback_deliveries_would_refuse(
    strict: Client, callback: str, reason: str
) -> None:
    resp = await strict.post(
        "/v1/jobs",
        data=request_json(CallBack=callback),
        params={"bucket": BUCKET, "region": REGION},
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_request"
    [detail] = error["details"]
    assert detail["path"] == "Request.Operation.CallBack"
    assert reason in detail["message"]
    assert await strict.app[QUEUE].list_jobs() == []


@pytest.mark.parametrize(
    "operation",
    [
        {"CallBack": "https://hooks.example.com/ci"},
        {"CallBack": "no"},
        # A TDMQ job's CallBack is never called.
        {
            "CallBack": "http://169.254.169.254/",
            "CallBackType": "TDMQ",
            "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": "q"},
        },
    ],
)
async def test_intake_accepts_callbacks_that_will_not_be_refused(
    strict: Client, operation: dict[str, str]
) -> None:
    resp = await strict.post(
        "/v1/jobs",
        data=request_json(**operation),
        params={"bucket": BUCKET, "region": REGION},
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def test_an_opened_network_is_allowed(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    settings = webhook_settings(tmp_path, CIRELAY_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")
    client = await aiohttp_client(create_app(settings), headers=AUTH)
    resp = await client.post(
        "/v1/jobs",
        data=request_json(CallBack="http://localhost:8080/hook"),
        params={"bucket": BUCKET, "region": REGION},
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def test_a_hostname_resolving_to_loopback_is_refused_when_connecting(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """A subscription (or a name whose DNS answer changed after intake) goes through the same
    guarded resolver: the receiver on loopback never hears of it, the delivery is dead."""
    receiver = await Receiver().start()
    try:
        settings = webhook_settings(
            tmp_path,
            CIRELAY_WEBHOOK_ALLOWED_NETWORKS="",
            CIRELAY_WEBHOOK_URLS=receiver.url.replace("127.0.0.1", "localhost"),
        )
        client = await aiohttp_client(create_app(settings), headers=AUTH)
        job = await submitted_job(client.app[QUEUE])
        await post_callback(client, job, task_finish_xml(f"j{'c' * 32}"), "application/xml")
        [view] = await wait_for_state(client, job.id, "dead")
        assert "resolves only to refused addresses" in view["last_error"]
        assert view["attempts"] == 1
        assert receiver.received == []
    finally:
        await receiver.stop()


async def test_a_redirect_to_loopback_is_not_followed(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    target = await Receiver(host="127.0.0.2").start()
    redirector = await Receiver().start()
    redirector.status = 307
    redirector.headers = {"Location": target.url}
    try:
        # Only the redirector's address is opened; the target would be refused anyway.
        settings = webhook_settings(tmp_path, CIRELAY_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        client = await aiohttp_client(create_app(settings), headers=AUTH)
        job = await submitted_job(client.app[QUEUE], callback=redirector.url)
        await post_callback(client, job, task_finish_xml(f"j{'d' * 32}"), "application/xml")
        [view] = await wait_for_state(client, job.id, "dead")
        assert view["last_status"] == 307
        assert "not followed" in view["last_error"]
        assert len(redirector.received) == 1
        assert target.received == []
    finally:
        await redirector.stop()
        await target.stop()


class _Rebinding(AbstractResolver):
    """A DNS that answers a public address first and loopback after: what rebinding does."""

    def __init__(self) -> None:
        self.answers = ["93.184.215.14", "127.0.0.1"]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers.pop(0)
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


async def test_the_address_connected_to_is_the_one_checked() -> None:
    resolver = GuardedResolver(AddressPolicy(), _Rebinding())
    [first] = await resolver.resolve("rebind.example", 80)
    assert first["host"] == "93.184.215.14"
    with pytest.raises(DestinationRefused, match=re.escape("loopback address 127.0.0.1")):
        await resolver.resolve("rebind.example", 80)


async def test_aiohttp_reports_a_refused_resolution_as_its_cause() -> None:
    """What the dispatcher relies on to tell a refused destination from a network failure."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(AddressPolicy()))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.post("http://localhost:9/")
    assert isinstance(caught.value.os_error, DestinationRefused)


def test_allowed_networks_parse_and_open_ranges() -> None:
    policy = AddressPolicy(parse_networks("127.0.0.0/8, 169.254.0.0/16"))
    assert policy.refusal(ipaddress.ip_address("127.3.2.1")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) == "loopback address ::1"
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not a CIDR network")):
        parse_networks("10.0.0.0/33")


def test_settings_refuse_malformed_webhook_settings() -> None:
    for name, value, problem in (
        ("CIRELAY_WEBHOOK_ALLOWED_NETWORKS", "nope", "is not a CIDR network"),
        ("CIRELAY_WEBHOOK_RETRY_SCHEDULE", "5,soon", "comma-separated numbers"),
        ("CIRELAY_WEBHOOK_RETRY_SCHEDULE", "5,-1", "0 or more"),
        ("CIRELAY_WEBHOOK_SECRET", "whsec_!!", "not base64"),
        ("CIRELAY_WEBHOOK_SECRET", "shh", "must start with whsec_"),
        ("CIRELAY_WEBHOOK_URLS", "ftp://x", "is not an http(s) URL"),
    ):
        with pytest.raises(SettingsError, match=re.escape(problem)) as caught:
            Settings.load({name: value})
        assert caught.value.variable == name
    with pytest.raises(SettingsError, match="is required with CIRELAY_WEBHOOK_URLS"):
        Settings.load({"CIRELAY_WEBHOOK_URLS": "https://hooks.example.com/"})

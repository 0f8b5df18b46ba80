from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings


async def test_healthz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    assert resp.headers["X-Request-Id"]


async def test_readyz_reports_database(client: TestClient) -> None:
    resp = await client.get("/readyz")
    body = await resp.json()
    assert body["components"]["database"] == {"ok": True, "detail": "ok"}


async def test_request_id_is_echoed(client: TestClient) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"


async def test_unknown_route_is_json_404(client: TestClient) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_wrong_method_is_json_405(client: TestClient) -> None:
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_v1_requires_bearer_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        resp = await client.get("/v1/anything", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_metrics_exposition(client: TestClient) -> None:
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert 'cirelay_build_info{version="' in text
    assert 'cirelay_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text


async def test_readyz_is_503_naming_missing_ci_credentials(client: TestClient) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "not_ready"
    assert body["components"]["ci_credentials"] == {
        "ok": False,
        "detail": "missing CIRELAY_CI_SECRET_ID, CIRELAY_CI_SECRET_KEY",
    }


async def test_readyz_is_200_when_every_component_is_ready(
    settings: Settings, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> None:
    ready = settings.replace(ci_secret_id="AKIDtest", ci_secret_key="secret")
    client = await aiohttp_client(create_app(ready))
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert set(body["components"]) == {"database", "ci_credentials"}

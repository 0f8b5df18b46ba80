"""The checked-in OpenAPI document stays true to the routes the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings

SPEC = json.loads((Path(__file__).resolve().parents[2] / "service" / "openapi.json").read_text())


def _app_operations(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    operations = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        operations.add((route.method.lower(), str(path)))
    return operations


def test_every_route_is_documented_and_every_documented_route_exists(settings: Settings) -> None:
    documented = {(method, path) for path, item in SPEC["paths"].items() for method in item}
    assert _app_operations(settings) == documented


def test_spec_is_openapi_3_1_with_error_schema() -> None:
    assert SPEC["openapi"].startswith("3.1")
    assert "Error" in SPEC["components"]["schemas"]


async def test_served_spec_is_the_checked_in_file(client: TestClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == SPEC

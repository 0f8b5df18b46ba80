"""deploy/grafana: the dashboard parses, queries only what service/metrics.py exports, covers all
of it, and is wired to the provisioned Prometheus the way compose mounts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import (
    as_promql,
    check,
    dashboard_queries,
    families,
    load_dashboard,
    referenced_series,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


QUERIES = dashboard_queries()


def test_the_dashboard_has_unique_ids_and_a_grid_that_fits() -> None:
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "cirelay"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']} has no query"
    cells = {
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    }
    area = sum(panel["gridPos"]["w"] * panel["gridPos"]["h"] for panel in panels)
    assert len(cells) == area, "panels overlap"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_a_query_names_only_metrics_and_labels_cirelay_exports(where: str, expr: str) -> None:
    assert [str(p) for p in check(expr, families())] == []


def test_every_metric_cirelay_exports_has_a_panel() -> None:
    shown = {name for _, expr in QUERIES for name in referenced_series(expr)}
    exported = {
        name.removesuffix("_bucket")
        for name in families()
        if not name.endswith(("_created", "_count", "_sum"))
    }
    shown_families = {name.removesuffix("_bucket") for name in shown}
    assert exported - shown_families == set()


def test_every_panel_queries_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert all(t["datasource"] == expected for t in panel["targets"]), panel["title"]


def test_every_query_is_valid_promql(tools: dict[str, Path], tmp_path: Path) -> None:
    # promtool parses recording rules' expressions exactly as Prometheus parses queries.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": as_promql(expr)}
                    for n, (_, expr) in enumerate(QUERIES)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [str(tools["promtool"]), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(QUERIES)} rules found" in done.stdout


def test_promtool_rejects_a_broken_query(tools: dict[str, Path], tmp_path: Path) -> None:
    # The check above is only worth something if promtool reads the expressions at all.
    path = tmp_path / "broken.yml"
    broken = as_promql('sum by (state (cirelay_queue_depth{job=~"$job"})')
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "dashboard:broken", "expr": broken}]}]}
        )
    )
    done = subprocess.run(
        [str(tools["promtool"]), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "parse error" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(cirelay_jobs_enqueud_total[5m])", "unknown series cirelay_jobs_enqueud_total"),
        ('cirelay_queue_depth{phase="queued"}', "cirelay_queue_depth has no label phase"),
        ('cirelay_queue_depth{state="pending"}', "cirelay_queue_depth{state} is never 'pending'"),
        (
            'cirelay_jobs_submitted_total{outcome="failed"}',
            "cirelay_jobs_submitted_total{outcome} is never 'failed'",
        ),
        (
            "sum by (operaton) (rate(cirelay_ci_requests_total[5m]))",
            "no selected series has a label operaton",
        ),
        ("cirelay_build_info_total", "unknown series cirelay_build_info_total"),
        ("vector(1)", "selects no series"),
    ],
)
def test_the_checker_catches(expr: str, problem: str) -> None:
    assert [p.message for p in check(expr, families())] == [problem]


def test_the_provisioned_datasource_is_the_compose_prometheus() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    # Service name and container port of compose's Prometheus (published as HOST:HOST_PORT:PORT).
    [published] = compose["services"]["prometheus"]["ports"]
    assert source["url"] == f"http://prometheus:{published.rsplit(':', 1)[1]}"


def test_grafana_loads_the_dashboard_from_where_compose_mounts_it() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "cirelay.yaml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/cirelay.json"] == f"{provider['options']['path']}/cirelay.json"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"

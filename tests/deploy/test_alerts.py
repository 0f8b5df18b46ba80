"""deploy/prometheus/alerts.yml: only real metrics, every alert proven both ways by
alerts_test.yml, and the Kubernetes PrometheusRule is the same rules."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, load_tool
from tests.deploy.promql import check, families

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"

# The issue's list: what a platform team expects to be told about.
REQUIRED = {
    "CirelayQueueBackingUp",
    "CirelayOldestQueuedJobTooOld",
    "CirelayCIErrorsHigh",
    "CirelayCIThrottlingHigh",
    "CirelayCallbacksRejected",
    "CirelayEventsLagging",
    "CirelayPulsarDisconnected",
    "CirelayJobsDeadLettered",
}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


RULES = rules()


def test_every_alert_the_issue_names_exists() -> None:
    assert REQUIRED - {rule["alert"] for rule in RULES} == set()


@pytest.mark.parametrize("rule", RULES, ids=[rule["alert"] for rule in RULES])
def test_an_alert_names_only_metrics_and_labels_cirelay_exports(rule: dict[str, Any]) -> None:
    assert [str(p) for p in check(rule["expr"], families())] == []


@pytest.mark.parametrize("rule", RULES, ids=[rule["alert"] for rule in RULES])
def test_an_alert_says_how_bad_and_what_to_do(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["description"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    outcomes: dict[str, set[bool]] = defaultdict(set)
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for expectation in case.get("alert_rule_test", []):
            outcomes[expectation["alertname"]].add(bool(expectation.get("exp_alerts")))
    assert {rule["alert"]: outcomes[rule["alert"]] for rule in RULES} == {
        rule["alert"]: {True, False} for rule in RULES
    }


def test_the_prometheus_rule_carries_exactly_the_alerts() -> None:
    rule = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text()), (
        "regenerate with: python deploy/tools/prometheusrule.py"
    )


def test_the_prometheus_rule_generator_writes_what_is_checked_in() -> None:
    rendered = load_tool("prometheusrule").render(yaml.safe_load(ALERTS.read_text()))
    assert rendered == (DEPLOY / "k8s" / "prometheusrule.yaml").read_text()

"""What a PromQL expression refers to, checked against the metrics service/metrics.py defines.

Not a PromQL parser (promtool and a real Prometheus check syntax elsewhere): it finds series
selectors, label matchers and grouping clauses, which is where a renamed metric or label hides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from service.metrics import Metrics
from service.queue.protocol import JOB_STATES
from service.submitter import OUTCOMES
from tests.deploy.conftest import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "cirelay.json"

# Labels that the scrape adds to every series (static config, or the Prometheus Operator's
# ServiceMonitor), so any expression may match or group on them.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container"})

# Series that do not come from cirelay but that its dashboards and alerts may use.
FOREIGN_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}

# Label values that only a fixed set can take; a typo there matches nothing, silently.
KNOWN_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("cirelay_queue_depth", "state"): frozenset(JOB_STATES),
    ("cirelay_jobs_submitted_total", "outcome"): frozenset(OUTCOMES),
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}

_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
# Words that may stand outside parentheses without being series names.
_NOT_SERIES = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)


@dataclass(frozen=True)
class Family:
    name: str  # as Prometheus stores it: cirelay_jobs_enqueued_total, cirelay_build_info, ...
    labels: frozenset[str]


def families() -> dict[str, Family]:
    """Every series name cirelay exports (one entry per histogram/counter suffix) → its labels."""
    found: dict[str, Family] = {}
    for collector in vars(Metrics()).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        [described] = collector.describe()
        # Declared label names have no public accessor; an Info's labels show only in samples.
        sampled = {
            label
            for family in collector.collect()
            for sample in family.samples
            for label in sample.labels
        }
        labels = frozenset(collector._labelnames) | sampled - {"le"}
        for suffix in _SUFFIXES[described.type]:
            name = described.name + suffix
            found[name] = Family(name, labels | ({"le"} if suffix == "_bucket" else set()))
    return found


@dataclass(frozen=True)
class Problem:
    expr: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} in: {self.expr}"


def referenced_series(expr: str) -> set[str]:
    """Series names an expression selects (function names and keywords excluded)."""
    names = set()
    bare = _GROUPING.sub("", _RANGE.sub("", _STRING.sub('""', expr)))
    for match in _SELECTOR.finditer(bare):
        name = match.group(1)
        if name.lower() in _NOT_SERIES or bare[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def check(expr: str, known: dict[str, Family]) -> list[Problem]:
    """Everything in ``expr`` that does not exist in cirelay's metrics."""
    problems: list[Problem] = []
    series = referenced_series(expr)
    if not series:
        problems.append(Problem(expr, "selects no series"))
    labels_in_scope = set(TARGET_LABELS)
    for name in sorted(series):
        if name in FOREIGN_SERIES:
            labels_in_scope |= FOREIGN_SERIES[name]
        elif name in known:
            labels_in_scope |= known[name].labels
        else:
            problems.append(Problem(expr, f"unknown series {name}"))
    for selector in _SELECTOR.finditer(_RANGE.sub("", expr)):
        name, braces = selector.group(1), selector.group(2)
        if not braces or name not in known:
            continue
        for label, op, value in _MATCHER.findall(braces):
            if label not in known[name].labels | TARGET_LABELS:
                problems.append(Problem(expr, f"{name} has no label {label}"))
            allowed = KNOWN_VALUES.get((name, label))
            if allowed is not None and op == "=" and value not in allowed:
                problems.append(Problem(expr, f"{name}{{{label}}} is never {value!r}"))
    for clause in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in clause.split(","))):
            if label not in labels_in_scope:
                problems.append(Problem(expr, f"no selected series has a label {label}"))
    return problems


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of the dashboard."""
    dashboard = load_dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert inner, f"variable {variable['name']}: not a label_values() query"
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def as_promql(expr: str, rate_interval: str = "5m") -> str:
    """A Grafana query as Prometheus receives it: every other variable set to match all."""
    return re.sub(r"\$\w+", ".*", expr.replace("$__rate_interval", rate_interval))

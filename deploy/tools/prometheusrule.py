"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml (one source of alerts).

Run after editing alerts.yml: `python deploy/tools/prometheusrule.py`; a test fails while the two
differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
TARGET = DEPLOY / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/tools/prometheusrule.py; do not edit.
# The Prometheus Operator's form of cirelay's alerts.
"""


def render(alerts: dict[str, Any]) -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cirelay", "labels": {"app.kubernetes.io/name": "cirelay"}},
        "spec": alerts,
    }
    body: str = yaml.safe_dump(rule, sort_keys=False, width=100)
    return HEADER + body


def main() -> int:
    TARGET.write_text(render(yaml.safe_load(ALERTS.read_text())))
    sys.stderr.write(f"wrote {TARGET}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

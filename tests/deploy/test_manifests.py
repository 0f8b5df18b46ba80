"""deploy/: the real tools accept every file (promtool, kustomize + kubeconform, docker compose),
reject broken copies, and the manifests keep the promises the issue asks of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service import __version__
from service.settings import Settings, env_name
from tests.deploy.conftest import DEPLOY, ROOT, compose_config, edit, kustomize_build, run_check

K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # as pinned in deploy/check.sh

SECRET_SETTINGS = {
    env_name(name): meta.metadata["secret"] for name, meta in Settings.__dataclass_fields__.items()
}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def resources() -> dict[str, dict[str, Any]]:
    """kind → the one resource of that kind, from the files the kustomization lists."""
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} resources"
            found[doc["kind"]] = doc
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resources()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    [only] = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def config_map() -> dict[str, str]:
    data: dict[str, str] = resources()["ConfigMap"]["data"]
    return data


# --- the tools accept deploy/ -------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(tools: dict[str, Path]) -> None:
    done = run_check("prom-config")
    assert done.returncode == 0, done.stdout
    assert "is valid prometheus config file syntax" in done.stdout


def test_promtool_accepts_the_alert_rules(tools: dict[str, Path]) -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    count = sum(len(group["rules"]) for group in groups)
    done = run_check("rules")
    assert done.returncode == 0, done.stdout
    assert f"SUCCESS: {count} rules found" in done.stdout


def test_the_alert_unit_tests_pass(tools: dict[str, Path]) -> None:
    done = run_check("rules-test")
    assert done.returncode == 0, done.stdout
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("kustomization", ["k8s", "k8s-postgres"])
def test_kubeconform_validates_every_resource(tools: dict[str, Path], kustomization: str) -> None:
    count = len(kustomize_build(tools, kustomization))
    done = run_check("k8s")
    assert done.returncode == 0, done.stdout
    for version in KUBERNETES_VERSIONS:
        assert (
            f"{kustomization}, Kubernetes {version}:\nSummary: {count} resources found parsing"
            f" stdin - Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0"
        ) in done.stdout


def test_docker_compose_accepts_both_stacks(tools: dict[str, Path]) -> None:
    done = run_check("compose")
    assert done.returncode == 0, done.stdout
    assert "compose.yaml: valid" in done.stdout
    assert "compose.yaml + compose.postgres.yaml: valid" in done.stdout


# --- ... and reject broken copies -------------------------------------------------------------


def test_promtool_rejects_an_alert_that_does_not_parse(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    alerts = deploy_copy / "prometheus" / "alerts.yml"
    edit(alerts, 'up{job="cirelay"} == 0', 'up{job="cirelay" == 0')
    done = run_check("rules", deploy=deploy_copy)
    assert done.returncode != 0
    assert "FAILED" in done.stdout


def test_the_alert_unit_tests_fail_when_an_alert_stops_firing(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    edit(
        deploy_copy / "prometheus" / "alerts.yml",
        'max by (namespace, job) (cirelay_queue_depth{state="queued"}) > 100',
        'max by (namespace, job) (cirelay_queue_depth{state="queued"}) > 1000',
    )
    done = run_check("rules-test", deploy=deploy_copy)
    assert done.returncode != 0
    assert "alertname: CirelayQueueBackingUp" in done.stdout


def test_the_alert_unit_tests_fail_when_an_alert_fires_on_healthy_series(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    edit(
        deploy_copy / "prometheus" / "alerts.yml",
        "(increase(cirelay_events_rejected_total[15m])) > 3",
        "(increase(cirelay_events_rejected_total[15m])) >= 0",
    )
    done = run_check("rules-test", deploy=deploy_copy)
    assert done.returncode != 0
    assert "alertname: CirelayCallbacksRejected" in done.stdout


def test_promtool_rejects_a_config_whose_rule_file_is_missing(
    tools: dict[str, Path], deploy_copy: Path
) -> None:
    (deploy_copy / "prometheus" / "alerts.yml").unlink()
    done = run_check("prom-config", deploy=deploy_copy)
    assert done.returncode != 0
    assert 'alerts.yml" does not point to an existing file' in done.stdout


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        (
            "deployment.yaml",
            "  replicas: 1\n",
            "  replicas: 1\n  replica: 2\n",
            "additional properties 'replica' not allowed",
        ),
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 30",
            'terminationGracePeriodSeconds: "30"',
            "got string, want null or integer",
        ),
        (
            "servicemonitor.yaml",
            "      interval: 30s",
            "      scrapeInterval: 30s",
            "additional properties 'scrapeInterval' not allowed",
        ),
        (
            "prometheusrule.yaml",
            '    - alert: CirelayDown\n      expr: up{job="cirelay"} == 0\n      for: 5m',
            '    - alert: CirelayDown\n      expr: up{job="cirelay"} == 0\n      for: 5 minutes',
            "does not match pattern",
        ),
    ],
    ids=["unknown-field", "wrong-type", "servicemonitor-crd", "prometheusrule-crd"],
)
def test_kubeconform_rejects(
    tools: dict[str, Path], deploy_copy: Path, file: str, old: str, new: str, complaint: str
) -> None:
    edit(deploy_copy / "k8s" / file, old, new)
    done = run_check("k8s", deploy=deploy_copy)
    assert done.returncode != 0
    assert complaint in done.stdout


def test_kustomize_rejects_a_missing_resource(tools: dict[str, Path], deploy_copy: Path) -> None:
    (deploy_copy / "k8s" / "pdb.yaml").unlink()
    done = run_check("k8s", deploy=deploy_copy)
    assert done.returncode != 0
    assert "pdb.yaml" in done.stdout


def test_docker_compose_rejects_an_unknown_key(tools: dict[str, Path], deploy_copy: Path) -> None:
    edit(deploy_copy / "compose.yaml", "    read_only: true\n", "    readonly: true\n")
    done = run_check("compose", deploy=deploy_copy)
    assert done.returncode != 0
    assert "additional properties 'readonly' not allowed" in done.stdout


# --- what the manifests promise -----------------------------------------------------------------


def test_every_manifest_file_is_deployed_by_the_kustomization() -> None:
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization()["resources"]) == sorted(files)


def test_the_kustomization_deploys_this_version() -> None:
    [image] = kustomization()["images"]
    assert image["name"] == container()["image"]
    assert image["newTag"] == __version__


def test_liveness_and_readiness_probe_healthz_and_readyz_on_the_admin_port() -> None:
    c = container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_the_pod_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    pod, c = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]


def test_only_the_database_directory_and_tmp_are_writable() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container()["volumeMounts"]}
    assert set(mounts) == {"/data", "/tmp"}
    claim = mounts["/data"]["persistentVolumeClaim"]["claimName"]
    assert claim == resources()["PersistentVolumeClaim"]["metadata"]["name"]
    assert "emptyDir" in mounts["/tmp"]
    database = Settings.load(config_map()).sqlite_path
    assert Path(database).parent == Path("/data")


def test_sqlite_keeps_the_deployment_to_one_pod_at_a_time() -> None:
    # One SQLite file may be worked by one process: no second replica, no overlapping rollout,
    # a volume only one node mounts, and an autoscaler that cannot add pods.
    assert config_map()["CIRELAY_DATABASE_URL"].startswith("sqlite:///")
    everything = resources()
    deployment = everything["Deployment"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert everything["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    hpa = everything["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == everything["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] == hpa["maxReplicas"] == 1


def test_the_disruption_budget_lets_nodes_drain() -> None:
    # minAvailable: 1 over a single replica would refuse every eviction.
    everything = resources()
    budget = everything["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] >= 1
    assert "minAvailable" not in budget
    labels = everything["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_kubernetes_waits_longer_than_the_shutdown_grace() -> None:
    grace = Settings.load(config_map()).shutdown_grace_seconds
    assert pod_spec()["terminationGracePeriodSeconds"] > grace


def test_compose_waits_longer_than_the_shutdown_grace(tools: dict[str, Path]) -> None:
    service = compose_config(tools)["services"]["cirelay"]
    grace = Settings.load(service["environment"]).shutdown_grace_seconds
    stop = service["stop_grace_period"]
    assert stop.endswith("s"), stop
    assert float(stop.removesuffix("s")) > grace


def test_the_config_map_holds_only_non_secret_settings() -> None:
    assert {key: SECRET_SETTINGS.get(key) for key in config_map()} == dict.fromkeys(
        config_map(), False
    )


def test_the_secret_holds_the_secret_settings_unfilled() -> None:
    data = resources()["Secret"]["stringData"]
    assert {key: SECRET_SETTINGS.get(key) for key in data} == dict.fromkeys(data, True)
    assert {
        "CIRELAY_API_TOKEN",
        "CIRELAY_CALLBACK_SECRET",
        "CIRELAY_CI_SECRET_ID",
        "CIRELAY_CI_SECRET_KEY",
        "CIRELAY_CALLBACK_TOKEN",
        "CIRELAY_PULSAR_TOKEN",
    } <= set(data)
    assert set(data.values()) == {""}, "no credentials in the repository"


def test_the_manifest_settings_load_and_serve_once_the_secret_is_filled() -> None:
    filled = {key: f"value-of-{key.lower()}" for key in resources()["Secret"]["stringData"]}
    settings = Settings.load({**config_map(), **filled})
    settings.check_serve()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert (settings.port, settings.admin_port) == (ports["http"], ports["admin"])


def test_the_compose_settings_load(tools: dict[str, Path]) -> None:
    environment = compose_config(tools)["services"]["cirelay"]["environment"]
    settings = Settings.load({key: value or "" for key, value in environment.items()})
    assert settings.pulsar_url == "pulsar://pulsar:6650"


def test_the_service_and_service_monitor_reach_the_container() -> None:
    everything = resources()
    service, monitor = everything["Service"], everything["ServiceMonitor"]
    pod_labels = everything["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert sorted(ports) == ["admin", "http"]
    targets = {port["targetPort"] for port in ports.values()}
    assert targets == {p["name"] for p in container()["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"
    ].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "admin"  # metrics on the management listener, not the public port
    assert endpoint["path"] == "/metrics"
    # The alerts select job="cirelay": the ServiceMonitor's job label is the Service's name.
    assert service["metadata"]["name"] == "cirelay"


def test_compose_builds_the_repository_dockerfile(tools: dict[str, Path]) -> None:
    build = compose_config(tools)["services"]["cirelay"]["build"]
    assert Path(build["context"]) == ROOT
    assert (ROOT / build["dockerfile"]).is_file()


def test_compose_mounts_only_files_that_exist(tools: dict[str, Path]) -> None:
    for name, service in compose_config(tools)["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"


@pytest.mark.parametrize("files", [(), ("compose.postgres.yaml",)], ids=["sqlite", "postgres"])
def test_the_compose_prometheus_scrapes_every_compose_cirelay(
    tools: dict[str, Path], files: tuple[str, ...]
) -> None:
    # Each replica is a DNS A record of the service name; a static target would scrape whichever
    # one the name resolved to that time.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "cirelay"]
    assert "static_configs" not in job
    [discovery] = job["dns_sd_configs"]
    services = compose_config(tools, *files)["services"]
    environment = {k: v or "" for k, v in services["cirelay"]["environment"].items()}
    assert discovery == {"names": ["cirelay"], "type": "A", "port": Settings.load(environment).port}
    assert job["metrics_path"] == "/metrics"
